//! Per-run files on a host (`<prefix>/run/<run-id>/`: the graph, written
//! atomically), and the removal of what a run leaves: its directory, and
//! with `--no-caching` the cached binary too.

use super::session::Session;
use super::sftp::{check_name, is_not_found, Sftp, Transfer, UploadError};
use super::HostError;

impl Sftp {
    /// Write `data` to `<prefix>/run/<run_id>/<name>` atomically (temporary
    /// name, then rename); returns the remote path. Pass the binary's
    /// [`CachedBinary::prefix`](super::launch::CachedBinary::prefix) so that a host on the `/tmp` fallback keeps
    /// both in the same place; `None` resolves the default again.
    pub async fn put_run_file(
        &self,
        session: &Session,
        prefix: Option<&str>,
        run_id: &str,
        name: &str,
        data: &[u8],
    ) -> Result<String, HostError<UploadError>> {
        check_name(run_id).map_err(|k| self.err(k))?;
        check_name(name).map_err(|k| self.err(k))?;
        let usable = self
            .usable_prefix(session, prefix, &["run", run_id])
            .await?;
        let dir = format!("{}/run/{run_id}", usable.real);
        let t = Transfer {
            size: data.len() as u64,
            progress: None,
            cancel: None,
        };
        let (path, _) = self.put(session, &mut { data }, (&dir, name), t).await?;
        Ok(path)
    }

    /// Remove `<prefix>/run/<run_id>` and everything in it (files only: we
    /// never create subdirectories there), then `run/` and the prefix if
    /// they are empty.
    pub async fn remove_run_dir(
        &self,
        prefix: &str,
        run_id: &str,
    ) -> Result<(), HostError<UploadError>> {
        check_name(run_id).map_err(|k| self.err(k))?;
        let dir = format!("{prefix}/run/{run_id}");
        self.remove_flat_dir(&dir).await.map_err(|k| self.err(k))?;
        self.remove_if_empty(&format!("{prefix}/run")).await;
        self.remove_if_empty(prefix).await;
        Ok(())
    }

    pub(super) async fn remove_flat_dir(&self, dir: &str) -> Result<(), UploadError> {
        let entries = match self.sftp.read_dir(dir).await {
            Ok(e) => e,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Self::sftp_err("readdir", dir)(e)),
        };
        for entry in entries {
            let path = format!("{dir}/{}", entry.file_name());
            self.sftp
                .remove_file(path.as_str())
                .await
                .map_err(Self::sftp_err("remove", &path))?;
        }
        self.sftp
            .remove_dir(dir)
            .await
            .map_err(Self::sftp_err("rmdir", dir))
    }

    /// rmdir that only succeeds on an empty directory; errors are expected
    /// (not empty, gone) and ignored.
    pub(super) async fn remove_if_empty(&self, dir: &str) {
        let _ = self.sftp.remove_dir(dir).await;
    }
}
