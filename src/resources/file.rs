//! `file`: a file or directory with content, state, mode and ownership.
//!
//! Writes are atomic: the new content goes to a temporary file in the same
//! directory, which is renamed over the target, so a reader never sees half a
//! file and a stop mid-write leaves the old file intact. The watcher follows
//! the parent directory with inotify (the `notify` crate), so an outside edit
//! or delete is corrected as soon as it happens.
//!
//! Every action goes through [`super::path`]: the target is opened without
//! following a link, and its owner and mode are read and changed on that
//! descriptor, so a link or another file swapped in by whoever can write
//! the directory is refused or replaced, never acted on (issue #13).

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::path::{self, NewFile, Opened, Parent, PathError, Reached};
use super::{
    bool_field, str_field, Checked, Ctx, EventTx, FieldError, FieldSpec, FieldType, KindSpec,
    Resource, ResourceError,
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
        FieldSpec {
            name: "parents",
            ty: FieldType::Bool,
            required: false,
            doc: "create missing parent directories first (0755); set on files collected with a pattern",
        },
    ],
    sends: &[],
    receives: &["content", "state", "mode", "owner", "group"],
    build,
    group: None,
};

struct File {
    /// As declared (absolute); the real path is `ctx.root` + this.
    path: String,
    content: Option<String>,
    absent: bool,
    mode: Option<u32>,
    owner: Option<String>,
    group: Option<String>,
    /// Create missing directories on the way (`mkdir -p`).
    parents: bool,
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
        parents: bool_field(params, "parents").unwrap_or(false),
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

    /// The owner and group asked for, resolved on this host.
    fn ids(&self) -> Result<(Option<u32>, Option<u32>), ResourceError> {
        let uid = self.owner.as_deref().map(resolve_user).transpose();
        let gid = self.group.as_deref().map(resolve_group).transpose();
        Ok((
            uid.map_err(ResourceError::Failed)?,
            gid.map_err(ResourceError::Failed)?,
        ))
    }

    /// The open directory that holds `target`, walked to without following
    /// a link nobody trusted made. `None` when a directory on the way is
    /// missing and this check may not create it (noop), which is said.
    fn reach(
        &self,
        target: &Path,
        create: bool,
        ctx: &Ctx,
    ) -> Result<Option<Parent>, ResourceError> {
        let mut made = Vec::new();
        let reached = path::open_parent(target, create && !ctx.noop, &mut made);
        for dir in &made {
            tracing::info!("{}: created directory {}", ctx.id, dir.display());
        }
        match reached? {
            Reached::Open(parent) => Ok(Some(parent)),
            Reached::Absent(dir) if ctx.noop => {
                if create {
                    tracing::info!("{}: would create directory {}", ctx.id, dir.display());
                }
                Ok(None)
            }
            Reached::Absent(dir) => Err(PathError::Missing {
                path: dir,
                target: target.to_owned(),
            }
            .into()),
        }
    }

    /// A file (no trailing /): content first, then owner and mode of what
    /// was opened and checked, never of a name looked up again.
    fn apply_file(&self, target: &Path, ctx: &Ctx) -> Result<bool, ResourceError> {
        let want = self.content.as_deref().map(str::as_bytes);
        let Some(parent) = self.reach(target, self.parents, ctx)? else {
            return self
                .write(None, None, want.unwrap_or_default(), target, ctx)
                .map(|()| true);
        };
        let mut have = parent.open()?;
        let same = match (want, have.as_mut()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(want), Some(have)) => have.holds(want)?,
        };
        match have {
            Some(mut have) if same => self.check_attrs(&mut have, ctx),
            have => self
                .write(
                    Some(&parent),
                    have.as_ref(),
                    want.unwrap_or_default(),
                    target,
                    ctx,
                )
                .map(|()| true),
        }
    }

    /// Atomic write (see [`Parent::replace`]) with the mode and owner asked
    /// for, or else those of the file it replaces.
    fn write(
        &self,
        parent: Option<&Parent>,
        old: Option<&Opened>,
        data: &[u8],
        target: &Path,
        ctx: &Ctx,
    ) -> Result<(), ResourceError> {
        let len = data.len();
        let Some(parent) = parent.filter(|_| !ctx.noop) else {
            tracing::info!(
                "{}: would write {len} bytes to {}",
                ctx.id,
                target.display()
            );
            return Ok(());
        };
        let (uid, gid) = self.ids()?;
        parent.replace(&NewFile {
            data,
            mode: self.mode.or(old.map(Opened::mode)).unwrap_or(0o644),
            uid: uid.or(old.map(Opened::uid)),
            gid: gid.or(old.map(Opened::gid)),
            owner_required: uid.is_some() || gid.is_some(),
        })?;
        tracing::info!("{}: wrote {len} bytes to {}", ctx.id, target.display());
        Ok(())
    }

    /// Owner, then mode (a change of owner clears set-id bits), on `have`.
    fn check_attrs(&self, have: &mut Opened, ctx: &Ctx) -> Result<bool, ResourceError> {
        let (uid, gid) = self.ids()?;
        let uid = uid.filter(|u| *u != have.uid());
        let gid = gid.filter(|g| *g != have.gid());
        let mode_differs = |have: &Opened| self.mode.filter(|m| *m != have.mode());
        if uid.is_none() && gid.is_none() && mode_differs(have).is_none() {
            return Ok(false);
        }
        let shown = have.path().display().to_string();
        if ctx.noop {
            if uid.is_some() || gid.is_some() {
                tracing::info!("{}: would chown {shown} to {uid:?}:{gid:?}", ctx.id);
            }
            if let Some(mode) = mode_differs(have) {
                tracing::info!("{}: would set mode {mode:04o} on {shown}", ctx.id);
            }
            return Ok(true);
        }
        have.check_single_link()?;
        if uid.is_some() || gid.is_some() {
            have.chown(uid, gid)?;
            tracing::info!("{}: set owner {uid:?}:{gid:?}", ctx.id);
        }
        if let Some(mode) = mode_differs(have) {
            have.chmod(mode)?;
            tracing::info!("{}: set mode {mode:04o}", ctx.id);
        }
        Ok(true)
    }

    /// A directory (trailing /): created with its parents when missing.
    fn apply_dir(&self, target: &Path, ctx: &Ctx) -> Result<bool, ResourceError> {
        let shown = target.display();
        let Some(parent) = self.reach(target, true, ctx)? else {
            tracing::info!("{}: would create directory {shown}", ctx.id);
            return Ok(true);
        };
        let created = match parent.open()? {
            Some(have) if !have.is_dir() => {
                return Err(ResourceError::Failed(format!(
                    "{shown} exists and is not a directory; refusing to replace it (hint: remove it, or drop the trailing / from path to manage it as a file)"
                )))
            }
            Some(_) => false,
            None if ctx.noop => {
                tracing::info!("{}: would create directory {shown}", ctx.id);
                return Ok(true);
            }
            None => {
                parent.mkdir(self.mode.unwrap_or(0o755))?;
                tracing::info!("{}: created directory {shown}", ctx.id);
                true
            }
        };
        let mut have = parent.open()?.ok_or_else(|| {
            ResourceError::Failed(format!(
                "{shown} was removed while being checked; will check again"
            ))
        })?;
        if !have.is_dir() {
            return Err(ResourceError::Failed(format!(
                "{shown} was replaced by something other than a directory while being checked; refusing to go on"
            )));
        }
        Ok(self.check_attrs(&mut have, ctx)? || created)
    }

    /// `state: absent`: removes what is there (a link itself, not where it
    /// leads).
    fn remove(&self, target: &Path, ctx: &Ctx) -> Result<bool, ResourceError> {
        let Some(parent) = self.reach(target, false, ctx).or_else(|e| match e {
            ResourceError::Path(PathError::Missing { .. }) => Ok(None),
            e => Err(e),
        })?
        else {
            return Ok(false);
        };
        let Some(st) = parent.lstat()? else {
            return Ok(false);
        };
        if ctx.noop {
            tracing::info!("{}: would remove {}", ctx.id, target.display());
            return Ok(true);
        }
        parent.remove(st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR)?;
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
            self.apply_dir(&target, ctx)?
        } else {
            self.apply_file(&target, ctx)?
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
            "parents" => Some(Value::Bool(self.parents)),
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
