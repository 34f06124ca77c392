//! The local account databases as `user` and `group` read them: the
//! entries of `/etc/passwd` and `/etc/group`, and the checks on account
//! names both kinds share.
//!
//! The files are read directly, not through NSS: the tools that change
//! them (`useradd`, `groupadd`, ...) manage the local files only, so an
//! account that came from LDAP would read as present and never be created
//! locally, and a cache (nscd) could answer with what was true before the
//! last change. Nothing here writes: changes go through the shadow tools,
//! which take the databases' locks and keep `/etc/shadow` and `/etc/gshadow`
//! in step.

use super::argv;
use super::{Ctx, FieldError, FieldSpec, FieldType, ResourceError};

/// The `state` field `user` and `group` share.
pub(super) const STATE_FIELD: FieldSpec = FieldSpec {
    name: "state",
    ty: FieldType::Str,
    required: false,
    doc: "exists (default) or absent",
};

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Reads `/etc/passwd`; malformed lines are skipped, as the C library does.
pub(crate) fn passwd() -> Result<Vec<PasswdEntry>, ResourceError> {
    Ok(read("/etc/passwd")?
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() == 7).then_some(())?;
            Some(PasswdEntry {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].into(),
                shell: f[6].into(),
            })
        })
        .collect())
}

/// Reads `/etc/group`; malformed lines are skipped.
pub(crate) fn groups() -> Result<Vec<GroupEntry>, ResourceError> {
    Ok(read("/etc/group")?
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() == 4).then_some(())?;
            Some(GroupEntry {
                name: f[0].into(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect())
}

fn read(path: &str) -> Result<String, ResourceError> {
    std::fs::read_to_string(path).map_err(|e| ResourceError::io(format!("cannot read {path}"), e))
}

/// Refuses a name the shadow tools would misread or refuse: empty, too
/// long, starting with `-` (an option), all digits (a uid), or holding a
/// character that separates fields or list items in the databases.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), FieldError> {
    let bad = |why: &str| {
        Err(FieldError::new(
            "name",
            format!("{kind} name {name:?} {why}; expected letters, digits, '_', '-' or '.', starting with a letter or '_', at most 32 characters"),
        ))
    };
    if name.is_empty() || name.len() > 32 {
        return bad("has the wrong length");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return bad("starts with a character an account name cannot start with");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return bad("is all digits, which reads as a number");
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !name.trim_end_matches('$').chars().all(ok) {
        return bad("holds a character an account name cannot have");
    }
    Ok(())
}

/// Reads `state: exists | absent` (default exists); true for exists.
pub(crate) fn read_state(state: Option<String>) -> Result<bool, FieldError> {
    match state.as_deref() {
        None | Some("exists") => Ok(true),
        Some("absent") => Ok(false),
        Some(other) => Err(FieldError::new(
            "state",
            format!("state must be exists or absent, not {other:?}"),
        )),
    }
}

/// Reads an optional id field (uid, gid) that must fit a `u32`.
pub(crate) fn read_id(field: &'static str, v: Option<i64>) -> Result<Option<u32>, FieldError> {
    match v {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
            FieldError::new(
                field,
                format!("{field} must be between 0 and 4294967295, not {n}"),
            )
        }),
    }
}

/// One change to an account: the shadow tool, its argv, and what it does in
/// words (for the log, for `--noop`, and for the error when it fails).
pub(crate) struct Step {
    pub tool: &'static str,
    pub args: Vec<String>,
    pub what: String,
}

impl Step {
    pub fn new(tool: &'static str, args: Vec<String>, what: String) -> Step {
        Step { tool, args, what }
    }

    /// Runs the tool; a failure carries the tool's own last words.
    pub async fn run(&self, ctx: &Ctx) -> Result<(), ResourceError> {
        let ran = argv::run(self.tool, &self.args, &[], &ctx.cancel).await?;
        if ran.ok() {
            tracing::info!("{}: {}", ctx.id, self.what);
            return Ok(());
        }
        Err(ResourceError::Failed(format!(
            "cannot {}: {} exited with code {}: {}",
            self.what,
            self.tool,
            ran.code,
            ran.tail()
        )))
    }
}
