//! The shipped binary, compressed (#17): its compressed forms, made once on
//! the initiator and kept beside its own cache, and the host-side command
//! that turns an uploaded form back into the binary, verified before it is
//! ever put where it can run.
//!
//! Initiator side ([`Packer`]): a form is looked for, in order, beside the
//! binary (`<binary>.xz`, `<binary>.gz`: what a gateway itself received and
//! kept in its cache directory, so it sends that onward), then in the
//! initiator's cache (`$XDG_CACHE_HOME/mgmt/ship/<sha256>.<ext>`, else
//! `~/.cache/mgmt/ship/`), and made there when missing (written under a
//! temporary name, then renamed; the newest four per codec are kept). Any form found is decompressed here once
//! per run and its SHA-256 compared before it is used; a wrong one is made
//! again. With `--no-caching` nothing is kept: the form lives in a
//! temporary directory for the run's life.
//!
//! Host side ([`unpack_command`]): the upload lands under a temporary name
//! in the checked cache directory ([`super::sftp`]); one command
//! decompresses it with the host's own tool to another temporary name
//! there, hashes the result, and only when it matches renames it to `mgmt`
//! and the upload to `mgmt.<ext>`. Bytes that fail never reach the binary's
//! path, and every start checks the install stamp or the hash before its
//! `exec`.
//!
//! The codec is the host's choice, asked in the command that already asks
//! the login uid ([`PROBE_COMMAND`]): zstd where the host has `zstd` (the
//! 10.8 MB release binary is 3.9 MB, 0.02 s of CPU to decompress), else xz
//! (3.4 MB with the x86 branch filter, but 0.25 s of CPU on every host),
//! else gzip, which every host has (4.8 MB); a host with none gets the
//! binary as it is.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

use super::shell_quote;
use super::stamp::WRITE_STAMP_SH;

/// Name of the binary inside its cache directory.
pub(super) const BIN_NAME: &str = "mgmt";

/// Exit code of [`unpack_command`] when the decompressed result is not the
/// binary (the tool failed, or its output hashed wrong); it was not kept.
pub const UNPACK_FAILED_EXIT: u32 = 122;

/// One command that prints the login uid, then the name of each codec tool
/// the host has, one a line (`xz`, `gzip`). Always exits 0 once `id -u`
/// has run.
pub const PROBE_COMMAND: &str =
    "id -u && for c in zstd xz gzip; do command -v \"$c\" >/dev/null 2>&1 && echo \"$c\"; done; :";

/// Binaries larger than this are debug builds (150 MB), shipped by tests
/// after every build: they go as gzip at its fastest level (a few seconds
/// here, 0.3x), not xz (a minute at -6, still 10 s at -0).
const BIG: u64 = 32 << 20;

/// A compression format both ends know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// `.zst`, decompressed with `zstd -dc`: about as small as xz, and
    /// 0.02 s of the host's CPU for the release binary where xz takes 0.3 s.
    Zstd,
    /// `.xz`, decompressed with `xz -dc`.
    Xz,
    /// `.gz`, decompressed with `gzip -dc`.
    Gzip,
}

impl Codec {
    /// The file name extension, without the dot.
    pub fn ext(self) -> &'static str {
        match self {
            Self::Zstd => "zst",
            Self::Xz => "xz",
            Self::Gzip => "gz",
        }
    }

    /// The host's tool that decompresses it.
    pub fn tool(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Gzip => "gzip",
        }
    }

    fn from_tool(name: &str) -> Option<Self> {
        [Self::Zstd, Self::Xz, Self::Gzip]
            .into_iter()
            .find(|c| c.tool() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What [`PROBE_COMMAND`] found out about a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostProbe {
    /// The login user's uid.
    pub uid: u32,
    /// The codecs the host can decompress, best first.
    pub codecs: Vec<Codec>,
}

impl HostProbe {
    /// Parses the probe's output lines; `None` if the first is not a uid.
    pub fn parse(lines: &[String]) -> Option<Self> {
        let uid = lines.first()?.trim().parse().ok()?;
        let mut codecs: Vec<Codec> = lines
            .iter()
            .skip(1)
            .filter_map(|l| Codec::from_tool(l.trim()))
            .collect();
        codecs.sort_by_key(|c| c.index());
        codecs.dedup();
        Some(Self { uid, codecs })
    }
}

/// A compressed form of the binary, ready to send.
#[derive(Debug)]
pub struct Packed {
    /// Its format.
    pub codec: Codec,
    /// Where it is on this machine.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// Why a compressed form could not be had (the binary is then sent as it is).
#[derive(Debug, thiserror::Error)]
#[error("cannot compress {path}: {source}", path = .path.display())]
pub struct PackError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The compressed forms of one binary, each made or found (and checked)
/// at most once per run, on first use.
pub struct Packer {
    binary: PathBuf,
    sha256: String,
    size: u64,
    /// The initiator's cache directory for forms; `None`: keep nothing.
    keep: Option<PathBuf>,
    /// Where forms go when nothing is kept.
    scratch: OnceLock<Result<tempfile::TempDir, String>>,
    forms: [tokio::sync::OnceCell<Result<Arc<Packed>, String>>; 3],
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("binary", &self.binary)
            .field("keep", &self.keep)
            .finish()
    }
}

/// The initiator's cache of compressed forms: `$XDG_CACHE_HOME/mgmt/ship`,
/// else `~/.cache/mgmt/ship`; `None` without either variable.
pub fn default_keep_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("mgmt").join("ship"))
}

impl Packer {
    /// Forms of `binary` (`size` bytes, SHA-256 `sha256` in lowercase hex),
    /// kept in `keep` (see [`default_keep_dir`]) or, with `None`, only for
    /// this process's life.
    pub fn new(binary: &Path, sha256: &str, size: u64, keep: Option<PathBuf>) -> Self {
        Self {
            binary: binary.to_owned(),
            sha256: sha256.to_owned(),
            size,
            keep,
            scratch: OnceLock::new(),
            forms: Default::default(),
        }
    }

    /// The codec to send to a host that can decompress `have` (best
    /// first): the best, but never xz for a binary over [`BIG`] (a debug
    /// build: a minute to compress).
    pub fn choose(&self, have: &[Codec]) -> Option<Codec> {
        let big = self.size > BIG;
        have.iter().copied().find(|c| !big || *c != Codec::Xz)
    }

    /// The form for `codec`, found or made on first call.
    pub async fn get(&self, codec: Codec) -> Result<Arc<Packed>, String> {
        self.forms[codec.index()]
            .get_or_init(|| async {
                let job = Job {
                    binary: self.binary.clone(),
                    sha256: self.sha256.clone(),
                    size: self.size,
                    codec,
                    places: self.places(codec),
                };
                let made = tokio::task::spawn_blocking(move || job.run()).await;
                match made {
                    Ok(Ok(p)) => Ok(Arc::new(p)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("compression task: {e}")),
                }
            })
            .await
            .clone()
    }

    /// Where a form that came with the binary is: `<binary>.<ext>`.
    fn beside(&self, codec: Codec) -> PathBuf {
        let mut beside = self.binary.clone().into_os_string();
        beside.push(format!(".{}", codec.ext()));
        PathBuf::from(beside)
    }

    /// Where to look for a form, in order; the last is where a new one goes.
    fn places(&self, codec: Codec) -> Vec<PathBuf> {
        let mut out = vec![self.beside(codec)];
        let name = format!("{}.{}", self.sha256, codec.ext());
        if let Some(k) = &self.keep {
            // Created only when a form is made there (not when one is
            // found beside the binary).
            out.push(k.join(&name));
            return out;
        }
        let scratch = self.scratch.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("mgmt-ship-")
                .tempdir()
                .map_err(|e| e.to_string())
        });
        if let Ok(d) = scratch {
            out.push(d.path().join(&name));
        }
        out
    }
}

/// One form to find or make, off the async threads.
struct Job {
    binary: PathBuf,
    sha256: String,
    size: u64,
    codec: Codec,
    places: Vec<PathBuf>,
}

impl Job {
    fn run(self) -> Result<Packed, PackError> {
        for p in &self.places {
            if let Ok(size) = self.check(p) {
                tracing::debug!(path = %p.display(), size, "compressed binary found");
                return Ok(self.packed(p, size));
            }
        }
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| PackError { path, source }
        };
        let Some(dest) = self.places.last().filter(|_| self.places.len() > 1) else {
            return Err(err(&self.binary)(std::io::Error::other(
                "no directory to write it to",
            )));
        };
        let t = std::time::Instant::now();
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(err(dir))?;
        }
        let size = self.make(dest).map_err(err(dest))?;
        tracing::info!(path = %dest.display(), size, elapsed = ?t.elapsed(), "binary compressed");
        prune(dest);
        Ok(self.packed(dest, size))
    }

    fn packed(&self, path: &Path, size: u64) -> Packed {
        Packed {
            codec: self.codec,
            path: path.to_owned(),
            size,
        }
    }

    /// Decompresses `path` and compares the SHA-256; its size if it is the
    /// binary.
    fn check(&self, path: &Path) -> std::io::Result<u64> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        let mut read: Box<dyn Read> = match self.codec {
            Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
            Codec::Xz => Box::new(liblzma::read::XzDecoder::new(std::io::BufReader::new(file))),
            Codec::Gzip => Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file))),
        };
        let mut h = Sha256::new();
        let n = std::io::copy(&mut read, &mut h)?;
        if n == self.size && hex::encode(h.finalize()) == self.sha256 {
            Ok(size)
        } else {
            Err(std::io::Error::other("not the binary"))
        }
    }

    /// Compresses the binary to `dest` through a temporary name beside it.
    fn make(&self, dest: &Path) -> std::io::Result<u64> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".mgmt-ship-")
            .tempfile_in(dir)?;
        let mut src = std::io::BufReader::new(std::fs::File::open(&self.binary)?);
        let out = std::io::BufWriter::new(tmp.as_file_mut());
        let fast = self.size > BIG;
        match self.codec {
            Codec::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, if fast { 3 } else { 19 })?;
                std::io::copy(&mut src, &mut enc)?;
                enc.finish()?.flush()?;
            }
            Codec::Xz => {
                let stream = xz_stream(if fast { 0 } else { 6 })?;
                let mut enc = liblzma::write::XzEncoder::new_stream(out, stream);
                std::io::copy(&mut src, &mut enc)?;
                enc.finish()?.flush()?;
            }
            Codec::Gzip => {
                let level = flate2::Compression::new(if fast { 1 } else { 9 });
                let mut enc = flate2::write::GzEncoder::new(out, level);
                std::io::copy(&mut src, &mut enc)?;
                enc.finish()?.flush()?;
            }
        }
        let size = tmp.as_file().metadata()?.len();
        tmp.persist(dest).map_err(|e| e.error)?;
        Ok(size)
    }
}

/// An xz encoder at `preset` with the x86 branch filter first: calls and
/// jumps get absolute targets, which repeat where relative ones did not
/// (the release binary: 3.63 MB at -9 without it, 3.37 MB at -6 with it,
/// in less time). Any xz decompresses it.
fn xz_stream(preset: u32) -> std::io::Result<liblzma::stream::Stream> {
    use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
    let opts = LzmaOptions::new_preset(preset).map_err(std::io::Error::other)?;
    let mut filters = Filters::new();
    filters.x86().lzma2(&opts);
    Stream::new_stream_encoder(&filters, Check::Crc64).map_err(std::io::Error::other)
}

/// Forms kept per codec in the initiator's cache: the newest, for the
/// binaries a user switches between; older ones are removed.
const KEEP_FORMS: usize = 4;

/// Removes the older forms beside `made` (same extension, named by a
/// SHA-256), so that the cache holds at most [`KEEP_FORMS`] per codec.
fn prune(made: &Path) {
    let (Some(dir), Some(ext)) = (made.parent(), made.extension()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut forms: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let p = e.path();
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            p.extension() == Some(ext)
                && stem.len() == 64
                && stem.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    forms.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in forms.into_iter().skip(KEEP_FORMS) {
        if old != made {
            let _ = std::fs::remove_file(old);
        }
    }
}

/// The shell command, run in the cache directory `dir`, that decompresses
/// the uploaded form `part` (a temporary name there) with the host's tool
/// into another temporary name, checks the SHA-256 of the result against
/// `sha256`, and only then renames it to `mgmt` (mode 0700), the form to
/// `mgmt.<ext>`, and writes the install stamp ([`super::stamp`]). On any
/// failure it removes both temporary files, says so on stderr and exits
/// [`UNPACK_FAILED_EXIT`]. `None` for a name that cannot be quoted.
pub fn unpack_command(dir: &str, part: &str, sha256: &str, codec: Codec) -> Option<String> {
    let bin = BIN_NAME;
    let packed = format!("{bin}.{}", codec.ext());
    let mut r = [0u8; 8];
    rand::fill(&mut r);
    let tmp = format!(".{bin}.{}.part", hex::encode(r));
    let msg = format!(
        "mgmt: the upload of {dir}/{packed} did not decompress to the binary with `{} -dc` \
         (it failed or its sha-256 is wrong); not using it",
        codec.tool()
    );
    Some(format!(
        "cd {dir} && umask 077 && set -C && s={sha} && t={tmp} && p={part} && {tool} -dc < \"$p\" > \"$t\" \
         && {{ h=$(openssl dgst -sha256 -r \"$t\" 2>/dev/null) || h=$(sha256sum \"$t\" 2>/dev/null); }} \
         && [ \"${{h%% *}}\" = \"$s\" ] && chmod 700 \"$t\" && mv -f \"$t\" {bin} && mv -f \"$p\" {packed} \
         && {WRITE_STAMP_SH} && exit 0; \
         rm -f \"$t\" \"$p\"; echo {msg} >&2; exit {UNPACK_FAILED_EXIT}",
        dir = shell_quote(dir)?,
        tool = codec.tool(),
        sha = shell_quote(sha256)?,
        part = shell_quote(part)?,
        msg = shell_quote(&msg)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn the_probe_reads_the_uid_and_the_codecs_best_first() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = HostProbe::parse(&lines(&["1000", "gzip", "xz"])).expect("parses");
        assert_eq!((p.uid, p.codecs), (1000, vec![Codec::Xz, Codec::Gzip]));
        let p = HostProbe::parse(&lines(&["0", "gzip", "zstd"])).expect("parses");
        assert_eq!(p.codecs, [Codec::Zstd, Codec::Gzip]);
        let p = HostProbe::parse(&lines(&["0"])).expect("parses");
        assert!(p.codecs.is_empty());
        assert!(HostProbe::parse(&lines(&["root"])).is_none());
        // The probe itself, here: a uid, then what this machine has.
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", PROBE_COMMAND])
            .output()
            .expect("sh");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let p = HostProbe::parse(&lines(&text.lines().collect::<Vec<_>>())).expect("parses");
        assert!(p.codecs.contains(&Codec::Gzip), "{text}");
    }

    /// Packs `data` with `codec`, then runs the unpack command in a fresh
    /// directory with `path` as PATH; returns its exit code and whether
    /// `mgmt` is there afterwards with the right content.
    fn round_trip(data: &[u8], codec: Codec, path: Option<&str>) -> (i32, bool) {
        let src = tempfile::tempdir().expect("tmp");
        let bin = src.path().join("bin");
        std::fs::write(&bin, data).expect("write");
        let keep = src.path().join("keep");
        let packer = Packer::new(&bin, &sha(data), data.len() as u64, Some(keep));
        let rt = tokio::runtime::Runtime::new().expect("rt");
        let packed = rt.block_on(packer.get(codec)).expect("packs");
        assert!(packed.path.starts_with(src.path().join("keep")));
        let host = tempfile::tempdir().expect("tmp");
        let dir = host.path().display().to_string();
        let part = format!(".mgmt.{}.0123.part", codec.ext());
        std::fs::copy(&packed.path, host.path().join(&part)).expect("copy");
        let cmd = unpack_command(&dir, &part, &sha(data), codec).expect("quotable");
        let mut sh = std::process::Command::new("/bin/sh");
        sh.arg("-c").arg(cmd);
        if let Some(p) = path {
            sh.env("PATH", p);
        }
        let code = sh.status().expect("sh").code().unwrap_or(-1);
        let got = std::fs::read(host.path().join("mgmt")).ok();
        let leftovers = std::fs::read_dir(host.path())
            .expect("ls")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".part"))
            })
            .count();
        assert_eq!(leftovers, 0, "no temporary file stays");
        // The form stays beside the binary, for a gateway, only when good.
        let form = host.path().join(format!("mgmt.{}", codec.ext()));
        assert_eq!(form.exists(), code == 0, "{codec:?}");
        (code, got.as_deref() == Some(data))
    }

    #[test]
    fn both_codecs_round_trip_through_the_hosts_own_tools() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [Codec::Zstd, Codec::Xz, Codec::Gzip] {
            assert_eq!(round_trip(&data, codec, None), (0, true), "{codec:?}");
        }
    }

    #[test]
    fn a_decompressor_that_lies_leaves_no_binary() {
        // A `gzip` and an `xz` first on PATH that print other bytes.
        let fake = tempfile::tempdir().expect("tmp");
        for tool in ["gzip", "xz", "zstd"] {
            let p = fake.path().join(tool);
            std::fs::write(&p, "#!/bin/sh\ncat >/dev/null\necho evil\n").expect("fake");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
        }
        let path = format!("{}:/usr/bin:/bin", fake.path().display());
        for codec in [Codec::Zstd, Codec::Xz, Codec::Gzip] {
            let (code, ok) = round_trip(b"the real binary", codec, Some(&path));
            assert_eq!((code, ok), (UNPACK_FAILED_EXIT as i32, false), "{codec:?}");
        }
    }

    #[test]
    fn a_wrong_form_in_the_cache_is_made_again() {
        let src = tempfile::tempdir().expect("tmp");
        let bin = src.path().join("bin");
        let data = b"binary content, compressed";
        std::fs::write(&bin, data).expect("write");
        let keep = src.path().join("keep");
        std::fs::create_dir_all(&keep).expect("mkdir");
        let planted = keep.join(format!("{}.gz", sha(data)));
        std::fs::write(&planted, b"not gzip").expect("plant");
        let packer = Packer::new(&bin, &sha(data), data.len() as u64, Some(keep));
        let rt = tokio::runtime::Runtime::new().expect("rt");
        let packed = rt.block_on(packer.get(Codec::Gzip)).expect("packs");
        assert_eq!(packed.path, planted);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&planted).expect("open"))
            .read_to_end(&mut back)
            .expect("gunzip");
        assert_eq!(back, data);
    }
}
