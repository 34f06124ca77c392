//! An emulated host's files, and the SFTP server over them.
//!
//! Each host owns a directory `<root>/<host>/` that stands for its whole
//! filesystem: its home is `<root>/<host>/home`, reported by SFTP as that
//! real absolute path, so the paths the initiator uses (cache, per-run
//! files) are real paths the in-process child can open as they are. SFTP
//! requests are confined to the host's directory: a path that leads out of
//! it is refused as a permission error. Each host starts with `home/` and
//! `tmp/`.
//!
//! Written files are stored once per content, as hard links to
//! `<root>/.blobs/<sha256>`. An upload into a directory named after a known
//! blob's hash (the binary cache is laid out that way) is compared with
//! that blob as it arrives and, while it matches, neither held nor hashed:
//! 10,000 hosts receiving the same binary cost one copy on disk and no
//! memory. Other uploads are held in memory up to [`SPILL`], then in a
//! temporary file, hashed as they come, and stored if their content is new.
//! A blob is shared, so nothing here ever writes into an existing file:
//! every write makes a new one.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use sha2::{Digest, Sha256};

/// Uploads larger than this go to a temporary file instead of memory.
const SPILL: usize = 1 << 20;

/// Contents stored once, by SHA-256, and the hashes already computed.
pub(crate) struct Blobs {
    dir: PathBuf,
    next_tmp: AtomicU64,
    /// `(device, inode, size, mtime)` → hex SHA-256.
    hashes: Mutex<HashMap<(u64, u64, u64, i64), String>>,
}

impl Blobs {
    pub fn new(dir: PathBuf) -> std::io::Result<Blobs> {
        fs::create_dir_all(dir.join("tmp"))?;
        Ok(Blobs {
            dir,
            next_tmp: AtomicU64::new(0),
            hashes: Mutex::new(HashMap::new()),
        })
    }

    fn tmp_path(&self) -> PathBuf {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    /// Makes `target` a link to the blob of `body` (`sha`), storing the
    /// content first if it is new.
    fn commit(&self, body: Body, sha: &str, target: &Path) -> std::io::Result<()> {
        let blob = self.dir.join(sha);
        match body {
            Body::Memory(bytes) if !blob.exists() => {
                let tmp = self.tmp_path();
                fs::write(&tmp, &bytes)?;
                fs::rename(&tmp, &blob)?;
            }
            Body::Memory(_) => {}
            Body::File(_, tmp) => {
                if !blob.exists() {
                    fs::rename(&tmp, &blob)?;
                }
                let _ = fs::remove_file(&tmp);
            }
            Body::Same { .. } => {}
        }
        self.link(sha, target)
    }

    /// Makes `target` a link to the stored blob `sha`.
    fn link(&self, sha: &str, target: &Path) -> std::io::Result<()> {
        let blob = self.dir.join(sha);
        // Link under a temporary name, then rename over the target, so a
        // reader never sees the target missing.
        let staged = self.tmp_path();
        fs::hard_link(&blob, &staged)?;
        fs::rename(&staged, target)
    }

    /// The blob an upload to `target` is expected to be: one named like a
    /// directory on its path (`.../bin/<sha256>/...`), if it is stored.
    fn candidate(&self, target: &Path) -> Option<(fs::File, String)> {
        target.ancestors().find_map(|dir| {
            let name = dir.file_name()?.to_str()?;
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let file = fs::File::open(self.dir.join(name)).ok()?;
            Some((file, name.to_owned()))
        })
    }

    /// The SHA-256 of the file at `path`, computed once per version of it.
    pub fn sha256(&self, path: &Path) -> std::io::Result<String> {
        let md = fs::metadata(path)?;
        let key = (
            md.dev(),
            md.ino(),
            md.size(),
            md.mtime_nsec() + md.mtime() * 1_000_000_000,
        );
        if let Some(h) = crate::ssh::lock(&self.hashes).get(&key) {
            return Ok(h.clone());
        }
        let mut f = fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let h = hex::encode(hasher.finalize());
        crate::ssh::lock(&self.hashes).insert(key, h.clone());
        Ok(h)
    }
}

/// One host's directory, as its filesystem.
#[derive(Clone)]
pub(crate) struct Jail {
    /// `<root>/<host>`.
    pub top: PathBuf,
    /// `<top>/home`.
    pub home: PathBuf,
}

impl Jail {
    pub fn new(top: PathBuf) -> std::io::Result<Jail> {
        let home = top.join("home");
        fs::create_dir_all(&home)?;
        fs::set_permissions(&top, fs::Permissions::from_mode(0o700))?;
        // What graphs expect of any host.
        let tmp = top.join("tmp");
        fs::create_dir_all(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
        Ok(Jail { top, home })
    }

    /// The real path for `path` (relative ones are under the home), if it
    /// stays inside the host's directory.
    pub fn resolve(&self, path: &str) -> Option<PathBuf> {
        let start = if path.starts_with('/') {
            PathBuf::from("/")
        } else {
            self.home.clone()
        };
        let mut out = start;
        for c in Path::new(path).components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(n) => out.push(n),
                Component::Prefix(_) => return None,
            }
        }
        (out == self.top || out.starts_with(&self.top)).then_some(out)
    }

    /// As [`Self::resolve`], and also the directories above the host's
    /// directory, whose attributes (only) a client may read: the cache
    /// checks every directory up to `/` for its owner and mode.
    pub fn resolve_stat(&self, path: &str) -> Option<PathBuf> {
        self.resolve(path).or_else(|| {
            let p = Path::new(path);
            let p = p.is_absolute().then(|| p.to_path_buf())?;
            let plain = p.components().all(|c| !matches!(c, Component::ParentDir));
            (plain && self.top.starts_with(&p)).then_some(p)
        })
    }
}

/// An open SFTP handle.
enum Open {
    Read(fs::File),
    Write(Upload),
    Dir(Option<Vec<File>>),
}

/// A file being written, hashed as it comes.
struct Upload {
    body: Body,
    target: PathBuf,
    hasher: Option<Sha256>,
    next: u64,
    mode: Option<u32>,
}

/// Where an upload's bytes are until it is closed.
enum Body {
    /// So far byte for byte the start of this blob (`len` bytes of it).
    Same {
        blob: fs::File,
        sha: String,
        len: u64,
    },
    Memory(Vec<u8>),
    File(fs::File, PathBuf),
}

impl Body {
    fn write_at(&mut self, blobs: &Blobs, data: &[u8], offset: u64) -> std::io::Result<()> {
        if let Body::Same { blob, len, .. } = self {
            if offset == *len && starts_with_at(blob, data, offset)? {
                *len += data.len() as u64;
                return Ok(());
            }
            self.unshare(blobs)?;
        }
        let end = offset as usize + data.len();
        if let Body::Memory(bytes) = self {
            if end <= SPILL {
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[offset as usize..end].copy_from_slice(data);
                return Ok(());
            }
            let tmp = blobs.tmp_path();
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            *self = Body::File(f, tmp);
        }
        match self {
            Body::File(f, _) => f.write_all_at(data, offset),
            _ => Ok(()),
        }
    }

    /// A body that stopped matching its blob: what matched so far is
    /// copied out of the blob into a body of its own.
    fn unshare(&mut self, blobs: &Blobs) -> std::io::Result<()> {
        if let Body::Same { blob, len, .. } = self {
            let mut prefix = Vec::new();
            std::io::Read::take(&mut *blob, *len).read_to_end(&mut prefix)?;
            *self = Body::Memory(Vec::new());
            self.write_at(blobs, &prefix, 0)?;
        }
        Ok(())
    }

    /// Whether this is a whole known blob (the upload is complete).
    fn known(&self) -> Option<&str> {
        match self {
            Body::Same { blob, sha, len } => {
                let size = blob.metadata().map(|m| m.len()).ok()?;
                (size == *len).then_some(sha.as_str())
            }
            _ => None,
        }
    }

    fn sha256(&self, blobs: &Blobs) -> std::io::Result<String> {
        match self {
            Body::Memory(bytes) => Ok(hex::encode(Sha256::digest(bytes))),
            Body::File(_, tmp) => blobs.sha256(tmp),
            Body::Same { .. } => Err(std::io::Error::other("a partial blob has no hash")),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Body::Memory(b) => b.len() as u64,
            Body::File(f, _) => f.metadata().map(|m| m.len()).unwrap_or(0),
            Body::Same { len, .. } => *len,
        }
    }
}

impl Upload {
    fn write(&mut self, blobs: &Blobs, data: &[u8], offset: u64) -> std::io::Result<()> {
        let was_same = matches!(self.body, Body::Same { .. });
        self.body.write_at(blobs, data, offset)?;
        if was_same {
            // Not hashed while it matches a blob; if it stopped matching,
            // the whole content is hashed at close.
            self.next = offset + data.len() as u64;
            if !matches!(self.body, Body::Same { .. }) {
                self.hasher = None;
            }
            return Ok(());
        }
        if offset == self.next {
            if let Some(h) = self.hasher.as_mut() {
                h.update(data);
            }
            self.next += data.len() as u64;
        } else {
            // Out of order: hash the whole content at close instead.
            self.hasher = None;
        }
        Ok(())
    }
}

/// The SFTP server of one session.
pub(crate) struct SftpServer {
    jail: Jail,
    blobs: Arc<Blobs>,
    handles: HashMap<String, Open>,
    next: u64,
}

type Reply<T> = Result<T, StatusCode>;

fn io_code(e: &std::io::Error) -> StatusCode {
    match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    }
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

impl SftpServer {
    pub fn new(jail: Jail, blobs: Arc<Blobs>) -> Self {
        SftpServer {
            jail,
            blobs,
            handles: HashMap::new(),
            next: 0,
        }
    }

    fn path(&self, p: &str) -> Reply<PathBuf> {
        self.jail.resolve(p).ok_or(StatusCode::PermissionDenied)
    }

    fn add(&mut self, id: u32, open: Open) -> Handle {
        self.next += 1;
        let handle = self.next.to_string();
        self.handles.insert(handle.clone(), open);
        Handle { id, handle }
    }

    fn start_upload(&self, target: PathBuf, flags: OpenFlags) -> Reply<Upload> {
        let body = match self.blobs.candidate(&target) {
            Some((blob, sha)) if flags.contains(OpenFlags::TRUNCATE) => {
                Body::Same { blob, sha, len: 0 }
            }
            _ => Body::Memory(Vec::new()),
        };
        let mut up = Upload {
            body,
            target,
            hasher: Some(Sha256::new()),
            next: 0,
            mode: None,
        };
        if !flags.contains(OpenFlags::TRUNCATE) && up.target.is_file() {
            // Copy-on-write: the old content (possibly a shared blob) is
            // copied, never written into.
            let old = fs::read(&up.target).map_err(|e| io_code(&e))?;
            up.write(&self.blobs, &old, 0).map_err(|e| io_code(&e))?;
        }
        Ok(up)
    }

    fn finish_upload(&self, mut u: Upload) -> Reply<()> {
        if let Some(sha) = u.body.known().map(str::to_owned) {
            self.blobs.link(&sha, &u.target).map_err(|e| io_code(&e))?;
            return set_mode(&u.target, u.mode);
        }
        // A shorter upload than the blob: store what came.
        u.body.unshare(&self.blobs).map_err(|e| io_code(&e))?;
        let sha = match u.hasher {
            Some(h) if u.next == u.body.len() => hex::encode(h.finalize()),
            _ => u.body.sha256(&self.blobs).map_err(|e| io_code(&e))?,
        };
        self.blobs
            .commit(u.body, &sha, &u.target)
            .map_err(|e| io_code(&e))?;
        set_mode(&u.target, u.mode)
    }
}

fn set_mode(target: &Path, mode: Option<u32>) -> Reply<()> {
    if let Some(mode) = mode {
        fs::set_permissions(target, fs::Permissions::from_mode(mode)).map_err(|e| io_code(&e))?;
    }
    Ok(())
}

/// Whether `file` holds `data` at `offset`.
fn starts_with_at(file: &fs::File, data: &[u8], offset: u64) -> std::io::Result<bool> {
    let mut have = vec![0u8; data.len()];
    let mut got = 0;
    while got < have.len() {
        let n = file.read_at(&mut have[got..], offset + got as u64)?;
        if n == 0 {
            return Ok(false);
        }
        got += n;
    }
    Ok(have == data)
}

fn attrs_of(md: &fs::Metadata) -> FileAttributes {
    FileAttributes::from(md)
}

fn list_dir(dir: &Path) -> Reply<Vec<File>> {
    let mut files = vec![];
    for e in fs::read_dir(dir).map_err(|e| io_code(&e))?.flatten() {
        if let Ok(md) = e.metadata() {
            files.push(File::new(e.file_name().to_string_lossy(), attrs_of(&md)));
        }
    }
    Ok(files)
}

impl russh_sftp::server::Handler for SftpServer {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
    }

    async fn init(&mut self, _version: u32, _ext: HashMap<String, String>) -> Reply<Version> {
        Ok(Version::new())
    }

    async fn realpath(&mut self, id: u32, path: String) -> Reply<Name> {
        let p = self.path(&path)?;
        Ok(Name {
            id,
            files: vec![File::dummy(p.to_string_lossy())],
        })
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        flags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Reply<Handle> {
        let p = self.path(&filename)?;
        if flags.intersects(OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE) {
            if flags.contains(OpenFlags::EXCLUDE) && p.exists() {
                return Err(StatusCode::Failure);
            }
            if !flags.contains(OpenFlags::CREATE) && !p.exists() {
                return Err(StatusCode::NoSuchFile);
            }
            let up = self.start_upload(p, flags)?;
            return Ok(self.add(id, Open::Write(up)));
        }
        let f = fs::File::open(&p).map_err(|e| io_code(&e))?;
        Ok(self.add(id, Open::Read(f)))
    }

    async fn close(&mut self, id: u32, handle: String) -> Reply<Status> {
        match self.handles.remove(&handle) {
            Some(Open::Write(u)) => self.finish_upload(u).map(|_| ok(id)),
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure),
        }
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Reply<Data> {
        let Some(Open::Read(f)) = self.handles.get(&handle) else {
            return Err(StatusCode::Failure);
        };
        let mut buf = vec![0u8; len.min(1 << 18) as usize];
        let n = f.read_at(&mut buf, offset).map_err(|e| io_code(&e))?;
        if n == 0 {
            return Err(StatusCode::Eof);
        }
        buf.truncate(n);
        Ok(Data { id, data: buf })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Reply<Status> {
        let Some(Open::Write(u)) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure);
        };
        u.write(&self.blobs, &data, offset)
            .map_err(|e| io_code(&e))?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        let p = self
            .jail
            .resolve_stat(&path)
            .ok_or(StatusCode::PermissionDenied)?;
        let md = fs::symlink_metadata(p).map_err(|e| io_code(&e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&md),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        let md = fs::metadata(self.path(&path)?).map_err(|e| io_code(&e))?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&md),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Reply<Attrs> {
        let md = match self.handles.get(&handle) {
            Some(Open::Read(f)) => f.metadata().map_err(|e| io_code(&e))?,
            Some(Open::Write(u)) => {
                let mut attrs = FileAttributes::empty();
                attrs.size = Some(u.body.len());
                return Ok(Attrs { id, attrs });
            }
            _ => return Err(StatusCode::Failure),
        };
        Ok(Attrs {
            id,
            attrs: attrs_of(&md),
        })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Reply<Status> {
        let p = self.path(&path)?;
        if let Some(mode) = attrs.permissions {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| io_code(&e))?;
        }
        Ok(ok(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Reply<Status> {
        if let (Some(Open::Write(u)), Some(mode)) =
            (self.handles.get_mut(&handle), attrs.permissions)
        {
            u.mode = Some(mode & 0o7777);
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Reply<Handle> {
        let p = self.path(&path)?;
        let files = list_dir(&p)?;
        Ok(self.add(id, Open::Dir(Some(files))))
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Reply<Name> {
        match self.handles.get_mut(&handle) {
            Some(Open::Dir(files)) => match files.take() {
                Some(files) => Ok(Name { id, files }),
                None => Err(StatusCode::Eof),
            },
            _ => Err(StatusCode::Failure),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Reply<Status> {
        fs::remove_file(self.path(&filename)?).map_err(|e| io_code(&e))?;
        Ok(ok(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, attrs: FileAttributes) -> Reply<Status> {
        let p = self.path(&path)?;
        fs::create_dir(&p).map_err(|e| io_code(&e))?;
        let mode = attrs.permissions.unwrap_or(0o755) & 0o7777;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(|e| io_code(&e))?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Reply<Status> {
        fs::remove_dir(self.path(&path)?).map_err(|e| io_code(&e))?;
        Ok(ok(id))
    }

    async fn rename(&mut self, id: u32, old: String, new: String) -> Reply<Status> {
        let (old, new) = (self.path(&old)?, self.path(&new)?);
        // SFTP v3 rename, as OpenSSH does it: refuses an existing target.
        if fs::symlink_metadata(&new).is_ok() {
            return Err(StatusCode::Failure);
        }
        fs::rename(old, new).map_err(|e| io_code(&e))?;
        Ok(ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let jail = Jail::new(dir.path().join("h1")).unwrap();
        let home = jail.home.clone();
        assert_eq!(jail.resolve(".").unwrap(), home);
        assert_eq!(jail.resolve("a/../b").unwrap(), home.join("b"));
        let inside = home.join(".cache").to_string_lossy().into_owned();
        assert_eq!(jail.resolve(&inside).unwrap(), home.join(".cache"));
        assert!(jail.resolve("/etc/passwd").is_none());
        assert!(jail.resolve("../../../..").is_none());
        // Directories above the host's own can be stat'ed, nothing else.
        let above = dir.path().to_string_lossy().into_owned();
        assert_eq!(jail.resolve_stat(&above).unwrap(), dir.path());
        assert_eq!(jail.resolve_stat("/").unwrap(), Path::new("/"));
        assert!(jail.resolve_stat("/etc").is_none());
        assert!(jail.resolve_stat(&format!("{above}/h1/../h10")).is_none());
        let sibling = dir.path().join("h10").to_string_lossy().into_owned();
        assert!(jail.resolve(&sibling).is_none());
    }

    #[test]
    fn equal_uploads_share_one_blob() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(Blobs::new(dir.path().join(".blobs")).unwrap());
        let mut links = vec![];
        for h in ["a", "b"] {
            let jail = Jail::new(dir.path().join(h)).unwrap();
            let server = SftpServer::new(jail.clone(), blobs.clone());
            let target = jail.home.join("f");
            let mut up = server
                .start_upload(target.clone(), OpenFlags::TRUNCATE)
                .unwrap();
            up.write(&blobs, b"same ", 0).unwrap();
            up.write(&blobs, b"bytes", 5).unwrap();
            server.finish_upload(up).unwrap();
            links.push(fs::metadata(&target).unwrap().ino());
        }
        assert_eq!(links[0], links[1], "one inode for one content");
        let sha = hex::encode(Sha256::digest(b"same bytes"));
        assert!(dir.path().join(".blobs").join(&sha).is_file());
        assert_eq!(blobs.sha256(&dir.path().join("a/home/f")).unwrap(), sha);
    }

    #[test]
    fn an_upload_into_a_known_blobs_directory_is_compared_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(Blobs::new(dir.path().join(".blobs")).unwrap());
        let content = b"the binary".repeat(1000);
        let sha = hex::encode(Sha256::digest(&content));
        std::fs::write(dir.path().join(".blobs").join(&sha), &content).unwrap();
        let jail = Jail::new(dir.path().join("h")).unwrap();
        let server = SftpServer::new(jail.clone(), blobs.clone());
        let bin = jail.home.join("bin").join(&sha);
        fs::create_dir_all(&bin).unwrap();
        // Same bytes: never held, linked to the blob.
        let mut up = server
            .start_upload(bin.join("a"), OpenFlags::TRUNCATE)
            .unwrap();
        for (k, chunk) in content.chunks(4096).enumerate() {
            up.write(&blobs, chunk, (k * 4096) as u64).unwrap();
            assert!(matches!(up.body, Body::Same { .. }));
        }
        server.finish_upload(up).unwrap();
        let blob_ino = fs::metadata(dir.path().join(".blobs").join(&sha))
            .unwrap()
            .ino();
        assert_eq!(fs::metadata(bin.join("a")).unwrap().ino(), blob_ino);
        // Different bytes half-way: stored as a blob of their own.
        let mut other = content.clone();
        other[5000] ^= 1;
        let mut up = server
            .start_upload(bin.join("b"), OpenFlags::TRUNCATE)
            .unwrap();
        for (k, chunk) in other.chunks(4096).enumerate() {
            up.write(&blobs, chunk, (k * 4096) as u64).unwrap();
        }
        server.finish_upload(up).unwrap();
        assert_eq!(fs::read(bin.join("b")).unwrap(), other);
        assert_ne!(fs::metadata(bin.join("b")).unwrap().ino(), blob_ino);
        // A truncated one likewise.
        let mut up = server
            .start_upload(bin.join("c"), OpenFlags::TRUNCATE)
            .unwrap();
        up.write(&blobs, &content[..100], 0).unwrap();
        server.finish_upload(up).unwrap();
        assert_eq!(fs::read(bin.join("c")).unwrap(), &content[..100]);
    }
}
