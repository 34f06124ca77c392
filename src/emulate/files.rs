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
//! Written files are stored once per content: an upload goes to a
//! temporary file in the shared blob directory while it is hashed, and on
//! close becomes a hard link to `<root>/.blobs/<sha256>` (moved there if it
//! is new). 10,000 hosts receiving the same binary use one copy of it on
//! disk. A blob is shared, so nothing here ever writes into an existing
//! file: every write makes a new one.

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

    /// Makes `target` a link to the blob holding `tmp`'s content (`sha`),
    /// moving `tmp` into the store if that content is new.
    fn commit(&self, tmp: &Path, sha: &str, target: &Path) -> std::io::Result<()> {
        let blob = self.dir.join(sha);
        if fs::hard_link(tmp, &blob).is_err() && !blob.exists() {
            fs::rename(tmp, &blob)?;
        }
        let _ = fs::remove_file(tmp);
        // Link under a temporary name, then rename over the target, so a
        // reader never sees the target missing.
        let staged = self.tmp_path();
        fs::hard_link(&blob, &staged)?;
        fs::rename(&staged, target)
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
        if let Some(h) = crate::remote::lock(&self.hashes).get(&key) {
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
        crate::remote::lock(&self.hashes).insert(key, h.clone());
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
}

/// An open SFTP handle.
enum Open {
    Read(fs::File),
    Write(Upload),
    Dir(Option<Vec<File>>),
}

/// A file being written: into a temporary blob, hashed as it comes.
struct Upload {
    file: fs::File,
    tmp: PathBuf,
    target: PathBuf,
    hasher: Option<Sha256>,
    next: u64,
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
        let tmp = self.blobs.tmp_path();
        let mut file = fs::File::create(&tmp).map_err(|e| io_code(&e))?;
        let mut hasher = Sha256::new();
        let mut next = 0;
        if !flags.contains(OpenFlags::TRUNCATE) && target.is_file() {
            // Copy-on-write: the old content (possibly a shared blob) is
            // copied, never written into.
            let old = fs::read(&target).map_err(|e| io_code(&e))?;
            file.write_all(&old).map_err(|e| io_code(&e))?;
            hasher.update(&old);
            next = old.len() as u64;
        }
        Ok(Upload {
            file,
            tmp,
            target,
            hasher: Some(hasher),
            next,
        })
    }

    fn finish_upload(&self, u: Upload) -> Reply<()> {
        drop(u.file);
        let sha = match u.hasher {
            Some(h) => hex::encode(h.finalize()),
            None => self.blobs.sha256(&u.tmp).map_err(|e| io_code(&e))?,
        };
        self.blobs
            .commit(&u.tmp, &sha, &u.target)
            .map_err(|e| io_code(&e))
    }
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
        u.file
            .write_all_at(&data, offset)
            .map_err(|e| io_code(&e))?;
        if offset == u.next {
            if let Some(h) = u.hasher.as_mut() {
                h.update(&data);
            }
            u.next += data.len() as u64;
        } else {
            // Out of order: hash the whole file at close instead.
            u.hasher = None;
        }
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        let md = fs::symlink_metadata(self.path(&path)?).map_err(|e| io_code(&e))?;
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
            Some(Open::Read(f)) => f.metadata(),
            Some(Open::Write(u)) => u.file.metadata(),
            _ => return Err(StatusCode::Failure),
        };
        Ok(Attrs {
            id,
            attrs: attrs_of(&md.map_err(|e| io_code(&e))?),
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
        if let (Some(Open::Write(u)), Some(mode)) = (self.handles.get(&handle), attrs.permissions) {
            u.file
                .set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| io_code(&e))?;
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
            up.file.write_all(b"same bytes").unwrap();
            up.hasher.as_mut().unwrap().update(b"same bytes");
            server.finish_upload(up).unwrap();
            links.push(fs::metadata(&target).unwrap().ino());
        }
        assert_eq!(links[0], links[1], "one inode for one content");
        let sha = hex::encode(Sha256::digest(b"same bytes"));
        assert!(dir.path().join(".blobs").join(&sha).is_file());
        assert_eq!(blobs.sha256(&dir.path().join("a/home/f")).unwrap(), sha);
    }
}
