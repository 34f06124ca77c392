//! `file`: a file or directory with content, state, mode and ownership.
//!
//! Writes are atomic: the new content goes to a temporary file in the same
//! directory, which is renamed over the target, so a reader never sees half a
//! file and a stop mid-write leaves the old file intact. The watcher follows
//! the parent directory with inotify (the `notify` crate), so an outside edit
//! or delete is corrected as soon as it happens.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::{
    str_field, Checked, Ctx, EventTx, FieldError, FieldSpec, FieldType, KindSpec, Resource,
    ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "file",
    fields: &[
        FieldSpec {
            name: "path",
            ty: FieldType::Str,
            required: false,
            doc: "absolute path (defaults to the name); a trailing / means a directory",
        },
        FieldSpec {
            name: "content",
            ty: FieldType::Str,
            required: false,
            doc: "the file's content; absent means leave the content alone",
        },
        FieldSpec {
            name: "state",
            ty: FieldType::Str,
            required: false,
            doc: "exists (default) or absent",
        },
        FieldSpec {
            name: "mode",
            ty: FieldType::Str,
            required: false,
            doc: "permissions as an octal string, e.g. \"0644\"",
        },
        FieldSpec {
            name: "owner",
            ty: FieldType::Str,
            required: false,
            doc: "user name or numeric uid",
        },
        FieldSpec {
            name: "group",
            ty: FieldType::Str,
            required: false,
            doc: "group name or numeric gid",
        },
    ],
    sends: &[],
    receives: &["content", "state", "mode", "owner", "group"],
    build,
};

struct File {
    /// As declared (absolute); the real path is `ctx.root` + this.
    path: String,
    content: Option<String>,
    absent: bool,
    mode: Option<u32>,
    owner: Option<String>,
    group: Option<String>,
}

fn build(name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    let path = str_field(params, "path").unwrap_or_else(|| name.to_owned());
    if !path.starts_with('/') {
        let field = if params.contains_key("path") {
            "path"
        } else {
            "name"
        };
        return Err(FieldError {
            field: Some(field),
            message: format!("file path {path:?} must be absolute (start with /)"),
        });
    }
    let absent = match str_field(params, "state").as_deref() {
        None | Some("exists") => false,
        Some("absent") => true,
        Some(other) => {
            return Err(FieldError::new(
                "state",
                format!("state must be exists or absent, not {other:?}"),
            ))
        }
    };
    let mode = match str_field(params, "mode") {
        None => None,
        Some(m) => Some(parse_mode(&m).ok_or_else(|| {
            FieldError::new(
                "mode",
                format!("mode {m:?} is not an octal mode like \"0644\""),
            )
        })?),
    };
    let file = File {
        path,
        content: str_field(params, "content"),
        absent,
        mode,
        owner: str_field(params, "owner"),
        group: str_field(params, "group"),
    };
    if file.is_dir() && file.content.is_some() {
        return Err(FieldError::new(
            "content",
            "a directory (path ending in /) cannot have content",
        ));
    }
    // Names are resolved on the host that applies the file (at check time):
    // the machine that validates the graph may not know them.
    if file.owner.as_deref() == Some("") || file.group.as_deref() == Some("") {
        let field = if file.owner.as_deref() == Some("") {
            "owner"
        } else {
            "group"
        };
        return Err(FieldError::new(field, format!("{field} must not be empty")));
    }
    Ok(Box::new(file))
}

fn parse_mode(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

fn resolve_user(s: &str) -> Result<u32, String> {
    if let Ok(id) = s.parse::<u32>() {
        return Ok(id);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(format!(
            "unknown user {s:?} (give a user name or a numeric uid)"
        )),
    }
}

fn resolve_group(s: &str) -> Result<u32, String> {
    if let Ok(id) = s.parse::<u32>() {
        return Ok(id);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(format!(
            "unknown group {s:?} (give a group name or a numeric gid)"
        )),
    }
}

/// `root` + `path` (which is absolute).
fn rooted(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

impl File {
    fn is_dir(&self) -> bool {
        self.path.ends_with('/')
    }

    fn check_content(&self, target: &Path, ctx: &Ctx) -> Result<bool, ResourceError> {
        let Some(want) = &self.content else {
            if target.exists() {
                return Ok(false);
            }
            return self.write(target, b"", ctx).map(|_| true);
        };
        match std::fs::read(target) {
            Ok(have) if have == want.as_bytes() => Ok(false),
            Ok(_) | Err(_) => self.write(target, want.as_bytes(), ctx).map(|_| true),
        }
    }

    /// Atomic write: temp file in the same directory, then rename.
    fn write(&self, target: &Path, data: &[u8], ctx: &Ctx) -> Result<(), ResourceError> {
        if ctx.noop {
            tracing::info!(
                "{}: would write {} bytes to {}",
                ctx.id,
                data.len(),
                target.display()
            );
            return Ok(());
        }
        let dir = target.parent().unwrap_or(Path::new("/"));
        let old = std::fs::metadata(target).ok();
        let mut tmp = tempfile::Builder::new()
            .prefix(".mgmt-")
            .tempfile_in(dir)
            .map_err(|e| {
                ResourceError::io(
                    format!("cannot create a temporary file in {}", dir.display()),
                    e,
                )
            })?;
        tmp.write_all(data)
            .map_err(|e| ResourceError::io(format!("cannot write {}", tmp.path().display()), e))?;
        let mode = self
            .mode
            .or(old.as_ref().map(|m| m.mode() & 0o7777))
            .unwrap_or(0o644);
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).map_err(
            |e| {
                ResourceError::io(
                    format!("cannot set the mode of {}", tmp.path().display()),
                    e,
                )
            },
        )?;
        if let (Some(old), None, None) = (&old, &self.owner, &self.group) {
            // Keep the previous owner; only root can, so a refusal is fine.
            let _ = std::os::unix::fs::chown(tmp.path(), Some(old.uid()), Some(old.gid()));
        }
        tmp.persist(target).map_err(|e| {
            ResourceError::io(format!("cannot rename into {}", target.display()), e.error)
        })?;
        tracing::info!(
            "{}: wrote {} bytes to {}",
            ctx.id,
            data.len(),
            target.display()
        );
        Ok(())
    }

    fn check_attrs(&self, target: &Path, ctx: &Ctx) -> Result<bool, ResourceError> {
        let meta = match std::fs::metadata(target) {
            Ok(m) => m,
            Err(_) if ctx.noop => return Ok(false),
            Err(e) => {
                return Err(ResourceError::io(
                    format!("cannot stat {}", target.display()),
                    e,
                ))
            }
        };
        let mut changed = false;
        if let Some(mode) = self.mode {
            if meta.mode() & 0o7777 != mode {
                changed = true;
                if ctx.noop {
                    tracing::info!(
                        "{}: would set mode {:04o} on {}",
                        ctx.id,
                        mode,
                        target.display()
                    );
                } else {
                    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| {
                            ResourceError::io(format!("cannot chmod {}", target.display()), e)
                        })?;
                    tracing::info!("{}: set mode {:04o}", ctx.id, mode);
                }
            }
        }
        let uid = self
            .owner
            .as_deref()
            .map(resolve_user)
            .transpose()
            .map_err(ResourceError::Failed)?;
        let gid = self
            .group
            .as_deref()
            .map(resolve_group)
            .transpose()
            .map_err(ResourceError::Failed)?;
        let uid = uid.filter(|u| *u != meta.uid());
        let gid = gid.filter(|g| *g != meta.gid());
        if uid.is_some() || gid.is_some() {
            changed = true;
            if ctx.noop {
                tracing::info!(
                    "{}: would chown {} to {:?}:{:?}",
                    ctx.id,
                    target.display(),
                    uid,
                    gid
                );
            } else {
                std::os::unix::fs::chown(target, uid, gid).map_err(|e| {
                    ResourceError::io(format!("cannot chown {}", target.display()), e)
                })?;
                tracing::info!("{}: set owner {:?}:{:?}", ctx.id, uid, gid);
            }
        }
        Ok(changed)
    }

    fn remove(&self, target: &Path, ctx: &Ctx) -> Result<bool, ResourceError> {
        let Ok(meta) = std::fs::symlink_metadata(target) else {
            return Ok(false);
        };
        if ctx.noop {
            tracing::info!("{}: would remove {}", ctx.id, target.display());
            return Ok(true);
        }
        let res = if meta.is_dir() {
            std::fs::remove_dir(target)
        } else {
            std::fs::remove_file(target)
        };
        res.map_err(|e| ResourceError::io(format!("cannot remove {}", target.display()), e))?;
        tracing::info!("{}: removed {}", ctx.id, target.display());
        Ok(true)
    }
}

#[async_trait::async_trait]
impl Resource for File {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        let target = rooted(&ctx.root, &self.path);
        let changed = if self.absent {
            self.remove(&target, ctx)?
        } else if self.is_dir() {
            let mut changed = false;
            if !target.is_dir() {
                changed = true;
                if ctx.noop {
                    tracing::info!("{}: would create directory {}", ctx.id, target.display());
                } else {
                    std::fs::create_dir_all(&target).map_err(|e| {
                        ResourceError::io(
                            format!("cannot create directory {}", target.display()),
                            e,
                        )
                    })?;
                    tracing::info!("{}: created directory {}", ctx.id, target.display());
                }
            }
            self.check_attrs(&target, ctx)? || changed
        } else {
            let wrote = self.check_content(&target, ctx)?;
            self.check_attrs(&target, ctx)? || wrote
        };
        Ok(if changed {
            Checked::Changed
        } else {
            Checked::Ok
        })
    }

    fn watcher(
        &self,
        root: &Path,
        events: EventTx,
    ) -> Option<futures::future::BoxFuture<'static, Result<(), ResourceError>>> {
        let target = rooted(root, self.path.trim_end_matches('/'));
        // Armed now, before the first check, so no outside change is missed.
        let watch = crate::fswatch::PathWatch::new(&target);
        Some(Box::pin(async move {
            let mut watch = watch.map_err(|e| ResourceError::Failed(e.to_string()))?;
            loop {
                watch
                    .changed()
                    .await
                    .map_err(|e| ResourceError::Failed(e.to_string()))?;
                let _ = events.try_send(());
            }
        }))
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        let s = |v: &Option<String>| v.clone().map(Value::String);
        match field {
            "path" => Some(Value::String(self.path.clone())),
            "content" => s(&self.content),
            "state" => Some(Value::String(
                if self.absent { "absent" } else { "exists" }.into(),
            )),
            "mode" => self.mode.map(|m| Value::String(format!("{m:04o}"))),
            "owner" => s(&self.owner),
            "group" => s(&self.group),
            _ => None,
        }
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        let Value::String(v) = value else {
            return Err(FieldError {
                field: None,
                message: format!("file field {field} takes a string"),
            });
        };
        match field {
            "content" => self.content = Some(v),
            "state" => {
                self.absent = match v.as_str() {
                    "exists" => false,
                    "absent" => true,
                    _ => {
                        return Err(FieldError::new(
                            "state",
                            format!("received state {v:?} is not exists or absent"),
                        ))
                    }
                }
            }
            "path" if v.starts_with('/') => self.path = v,
            "mode" => {
                self.mode = Some(parse_mode(&v).ok_or_else(|| {
                    FieldError::new("mode", format!("received mode {v:?} is not octal"))
                })?)
            }
            "owner" => self.owner = Some(v),
            "group" => self.group = Some(v),
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("file cannot receive {field} = {v:?}"),
                })
            }
        }
        Ok(())
    }
}
