//! `group`: a local group account (`/etc/group`), made so with `groupadd`,
//! `groupmod` and `groupdel`, each run with an argument vector.
//!
//! The check reads `/etc/group` ([`super::accounts`]) and changes only what
//! differs; a second run changes nothing. Members are not managed here: a
//! `user` lists its own supplementary groups. Nothing is watched: the
//! account databases change only through tools an administrator runs, and
//! mgmt corrects them on its next check.

use serde_yaml_ng::{Mapping, Value};

use super::accounts::{self, GroupEntry, Step};
use super::argv::words;
use super::{
    bool_field, int_field, str_field, Checked, Ctx, FieldError, FieldSpec, FieldType, KindSpec,
    Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "group",
    fields: &[
        accounts::STATE_FIELD,
        FieldSpec {
            name: "gid",
            ty: FieldType::Int,
            required: false,
            doc: "the numeric group id (default: the next free one)",
        },
        FieldSpec {
            name: "system",
            ty: FieldType::Bool,
            required: false,
            doc: "a system group: its gid is taken from the system range (on creation only)",
        },
    ],
    sends: &[],
    receives: &["state", "gid"],
    build,
    group: None,
};

struct Group {
    name: String,
    exists: bool,
    gid: Option<u32>,
    system: bool,
    /// The entry as last read, for Send/Recv of `gid`.
    seen: Option<GroupEntry>,
}

fn build(name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    accounts::check_name("group", name)?;
    Ok(Box::new(Group {
        name: name.to_owned(),
        exists: accounts::read_state(str_field(params, "state"))?,
        gid: accounts::read_id("gid", int_field(params, "gid"))?,
        system: bool_field(params, "system").unwrap_or(false),
        seen: None,
    }))
}

impl Group {
    /// The argv that makes the group so, and what it does in words; `None`
    /// when it is so already.
    fn plan(&self, now: Option<&GroupEntry>) -> Option<Step> {
        let name = &self.name;
        match (self.exists, now) {
            (false, None) => None,
            (false, Some(_)) => Some(Step::new(
                "groupdel",
                words(["--", name.as_str()]),
                format!("remove group {name}"),
            )),
            (true, None) => {
                let mut args = Vec::new();
                if self.system {
                    args.push("--system".to_owned());
                }
                if let Some(gid) = self.gid {
                    args.extend(words(["--gid".to_owned(), gid.to_string()]));
                }
                args.extend(words(["--", name.as_str()]));
                let gid = self
                    .gid
                    .map(|g| format!(" with gid {g}"))
                    .unwrap_or_default();
                Some(Step::new(
                    "groupadd",
                    args,
                    format!("create group {name}{gid}"),
                ))
            }
            (true, Some(e)) => {
                let gid = self.gid.filter(|g| *g != e.gid)?;
                let args = words([
                    "--gid".to_owned(),
                    gid.to_string(),
                    "--".into(),
                    name.clone(),
                ]);
                Some(Step::new(
                    "groupmod",
                    args,
                    format!("change group {name}'s gid from {} to {gid}", e.gid),
                ))
            }
        }
    }

    fn lookup(&self) -> Result<Option<GroupEntry>, ResourceError> {
        Ok(accounts::groups()?
            .into_iter()
            .find(|g| g.name == self.name))
    }
}

#[async_trait::async_trait]
impl Resource for Group {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        super::host_only(ctx, "the host's own accounts")?;
        let now = self.lookup()?;
        let Some(step) = self.plan(now.as_ref()) else {
            self.seen = now;
            return Ok(Checked::Ok);
        };
        if ctx.noop {
            tracing::info!("{}: would {}", ctx.id, step.what);
            self.seen = now;
            return Ok(Checked::Changed);
        }
        step.run(ctx).await?;
        self.seen = self.lookup()?;
        Ok(Checked::Changed)
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        match field {
            "state" => Some(Value::String(
                if self.exists { "exists" } else { "absent" }.into(),
            )),
            "gid" => self
                .seen
                .as_ref()
                .map(|e| e.gid)
                .or(self.gid)
                .map(Value::from),
            "system" => Some(Value::Bool(self.system)),
            _ => None,
        }
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        match field {
            "state" => self.exists = accounts::read_state(value.as_str().map(str::to_owned))?,
            "gid" => self.gid = accounts::read_id("gid", value.as_i64())?,
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("group cannot receive {field}"),
                })
            }
        }
        Ok(())
    }
}
