//! `user`: a local user account (`/etc/passwd`, `/etc/shadow`), made so
//! with `useradd`, `usermod` and `userdel`, each run with an argument
//! vector, never through a shell.
//!
//! Only the fields the graph sets are compared; a second run changes
//! nothing. `groups` is the exact list of supplementary groups (`[]` for
//! none), read from the member lists of `/etc/group`; the groups must exist
//! (order them before the user with an edge from each `group`). A new
//! ordinary account gets its home directory made from `/etc/skel`; a
//! system account gets none, as `useradd --system` does. Removing an
//! account leaves its home and files alone. Passwords are not managed.

use serde_yaml_ng::{Mapping, Value};

use super::accounts::{self, GroupEntry, PasswdEntry, Step};
use super::argv::words;
use super::{
    bool_field, int_field, str_field, Checked, Ctx, FieldError, FieldSpec, FieldType, KindSpec,
    Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "user",
    fields: &[
        accounts::STATE_FIELD,
        FieldSpec {
            name: "uid",
            ty: FieldType::Int,
            required: false,
            doc: "the numeric user id (default: the next free one)",
        },
        FieldSpec {
            name: "gid",
            ty: FieldType::Int,
            required: false,
            doc: "the primary group's id (default: a new group named after the user)",
        },
        FieldSpec {
            name: "home",
            ty: FieldType::Str,
            required: false,
            doc: "the home directory, an absolute path",
        },
        FieldSpec {
            name: "shell",
            ty: FieldType::Str,
            required: false,
            doc: "the login shell, an absolute path",
        },
        FieldSpec {
            name: "groups",
            ty: FieldType::StrList,
            required: false,
            doc: "the exact list of supplementary groups ([] for none)",
        },
        FieldSpec {
            name: "system",
            ty: FieldType::Bool,
            required: false,
            doc: "a system account: uid from the system range, no home made (on creation only)",
        },
    ],
    sends: &[],
    receives: &["state", "uid", "gid", "home", "shell", "groups"],
    build,
    group: None,
};

struct User {
    name: String,
    exists: bool,
    uid: Option<u32>,
    gid: Option<u32>,
    home: Option<String>,
    shell: Option<String>,
    /// Sorted and without duplicates.
    groups: Option<Vec<String>>,
    system: bool,
    /// The entry as last read, for Send/Recv of what the system chose.
    seen: Option<PasswdEntry>,
}

fn build(name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    accounts::check_name("user", name)?;
    let mut u = User {
        name: name.to_owned(),
        exists: accounts::read_state(str_field(params, "state"))?,
        uid: accounts::read_id("uid", int_field(params, "uid"))?,
        gid: accounts::read_id("gid", int_field(params, "gid"))?,
        home: None,
        shell: None,
        groups: None,
        system: bool_field(params, "system").unwrap_or(false),
        seen: None,
    };
    u.home = absolute("home", str_field(params, "home"))?;
    u.shell = absolute("shell", str_field(params, "shell"))?;
    u.groups = group_list(params.get("groups"))?;
    Ok(Box::new(u))
}

fn absolute(field: &'static str, v: Option<String>) -> Result<Option<String>, FieldError> {
    match v {
        Some(p) if !p.starts_with('/') || p.contains(':') || p.contains('\n') => {
            Err(FieldError::new(
                field,
                format!("{field} must be an absolute path without ':' or a line break, not {p:?}"),
            ))
        }
        v => Ok(v),
    }
}

/// The supplementary groups, checked as names, sorted, deduplicated.
fn group_list(v: Option<&Value>) -> Result<Option<Vec<String>>, FieldError> {
    let Some(items) = v.and_then(Value::as_sequence) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for item in items {
        let name = item.as_str().unwrap_or_default();
        accounts::check_name("group", name).map_err(|e| FieldError::new("groups", e.message))?;
        out.push(name.to_owned());
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

/// What differs between the account and the graph, as usermod options and
/// as words for the log.
struct Diff {
    args: Vec<String>,
    what: Vec<String>,
}

impl User {
    fn diff(&self, e: &PasswdEntry, member_of: &[String]) -> Diff {
        let mut d = Diff {
            args: Vec::new(),
            what: Vec::new(),
        };
        let mut change = |opt: &str, now: String, want: String, label: &str| {
            if now != want {
                d.what.push(format!("{label} {now} -> {want}"));
                d.args.extend([opt.to_owned(), want]);
            }
        };
        if let Some(uid) = self.uid {
            change("--uid", e.uid.to_string(), uid.to_string(), "uid");
        }
        if let Some(gid) = self.gid {
            change("--gid", e.gid.to_string(), gid.to_string(), "gid");
        }
        if let Some(home) = &self.home {
            change("--home", e.home.clone(), home.clone(), "home");
        }
        if let Some(shell) = &self.shell {
            change("--shell", e.shell.clone(), shell.clone(), "shell");
        }
        if let Some(groups) = &self.groups {
            if groups.as_slice() != member_of {
                d.what.push(format!(
                    "groups [{}] -> [{}]",
                    member_of.join(","),
                    groups.join(",")
                ));
                d.args.extend(["--groups".to_owned(), groups.join(",")]);
            }
        }
        d
    }

    fn useradd_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.system {
            args.push("--system".to_owned());
        } else {
            args.push("--create-home".to_owned());
        }
        let opts = [
            ("--uid", self.uid.map(|v| v.to_string())),
            ("--gid", self.gid.map(|v| v.to_string())),
            ("--home-dir", self.home.clone()),
            ("--shell", self.shell.clone()),
            ("--groups", self.groups.as_ref().map(|g| g.join(","))),
        ];
        for (opt, v) in opts {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                args.extend([opt.to_owned(), v]);
            }
        }
        args.extend(words(["--", self.name.as_str()]));
        args
    }

    /// The account's entry and its supplementary groups, sorted.
    fn lookup(&self) -> Result<Option<(PasswdEntry, Vec<String>)>, ResourceError> {
        let Some(e) = accounts::passwd()?
            .into_iter()
            .find(|p| p.name == self.name)
        else {
            return Ok(None);
        };
        let groups: Vec<GroupEntry> = accounts::groups()?;
        let mut member_of: Vec<String> = groups
            .into_iter()
            .filter(|g| g.members.contains(&self.name))
            .map(|g| g.name)
            .collect();
        member_of.sort();
        member_of.dedup();
        Ok(Some((e, member_of)))
    }

    /// The tool to run, its argv and what it does; `None` when all is so.
    fn plan(&self) -> Result<Option<Step>, ResourceError> {
        let name = &self.name;
        Ok(match (self.exists, self.lookup()?) {
            (false, None) => None,
            (false, Some(_)) => Some(Step::new(
                "userdel",
                words(["--", name.as_str()]),
                format!("remove user {name}"),
            )),
            (true, None) => Some(Step::new(
                "useradd",
                self.useradd_args(),
                format!("create user {name}"),
            )),
            (true, Some((e, member_of))) => {
                let d = self.diff(&e, &member_of);
                if d.args.is_empty() {
                    return Ok(None);
                }
                let mut args = d.args;
                args.extend(words(["--", name.as_str()]));
                Some(Step::new(
                    "usermod",
                    args,
                    format!("change user {name}: {}", d.what.join(", ")),
                ))
            }
        })
    }
}

#[async_trait::async_trait]
impl Resource for User {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        super::host_only(ctx, "the host's own accounts")?;
        let Some(step) = self.plan()? else {
            self.seen = self.lookup()?.map(|(e, _)| e);
            return Ok(Checked::Ok);
        };
        if ctx.noop {
            tracing::info!("{}: would {}", ctx.id, step.what);
            return Ok(Checked::Changed);
        }
        step.run(ctx).await?;
        self.seen = self.lookup()?.map(|(e, _)| e);
        Ok(Checked::Changed)
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        let seen = self.seen.as_ref();
        match field {
            "state" => Some(Value::String(
                if self.exists { "exists" } else { "absent" }.into(),
            )),
            "uid" => seen.map(|e| e.uid).or(self.uid).map(Value::from),
            "gid" => seen.map(|e| e.gid).or(self.gid).map(Value::from),
            "home" => seen
                .map(|e| e.home.clone())
                .or(self.home.clone())
                .map(Value::String),
            "shell" => seen
                .map(|e| e.shell.clone())
                .or(self.shell.clone())
                .map(Value::String),
            "groups" => self
                .groups
                .as_ref()
                .map(|g| Value::Sequence(g.iter().cloned().map(Value::String).collect())),
            "system" => Some(Value::Bool(self.system)),
            _ => None,
        }
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        let s = || value.as_str().map(str::to_owned);
        match field {
            "state" => self.exists = accounts::read_state(s())?,
            "uid" => self.uid = accounts::read_id("uid", value.as_i64())?,
            "gid" => self.gid = accounts::read_id("gid", value.as_i64())?,
            "home" => self.home = absolute("home", s())?,
            "shell" => self.shell = absolute("shell", s())?,
            "groups" => self.groups = group_list(Some(&value))?,
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("user cannot receive {field}"),
                })
            }
        }
        Ok(())
    }
}
