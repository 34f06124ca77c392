//! Resource kinds and the one trait the engine drives them through.
//!
//! Each kind lives in its own file and exposes a [`KindSpec`]: its name, its
//! fields (with types, for validation and Send/Recv checks) and a constructor.
//! [`KINDS`] is the only list of kinds; the graph parser and the engine only
//! ever go through it, so adding a kind touches this table and the new file,
//! nothing else. What a kind does not handle: ordering, retries, events
//! routing and convergence, which belong to the engine. A kind reaches
//! host paths only through `path` (no link followed that the graph did not
//! ask for) and starts commands only under a `keeper` (none outlives mgmt).

mod accounts;
mod argv;
mod exec;
mod file;
mod group;
mod keeper;
mod kv;
mod msg;
mod noop;
mod password;
mod path;
mod pkg;
mod svc;
mod timer;
mod user;

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde_yaml_ng::{Mapping, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The type of a field, for validation and for Send/Recv compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Str,
    Int,
    Bool,
    /// A list of strings (`groups: [www-data, adm]`); `[]` is an empty list.
    StrList,
}

impl FieldType {
    pub fn describe(self) -> &'static str {
        match self {
            FieldType::Str => "a string",
            FieldType::Int => "an integer",
            FieldType::Bool => "a boolean (true or false)",
            FieldType::StrList => "a list of strings",
        }
    }

    /// Whether `v` is a value of this type; nothing is converted.
    pub fn fits(self, v: &Value) -> bool {
        match self {
            FieldType::Str => v.is_string(),
            FieldType::Int => v.is_i64() || v.is_u64(),
            FieldType::Bool => v.is_bool(),
            FieldType::StrList => v
                .as_sequence()
                .is_some_and(|items| items.iter().all(Value::is_string)),
        }
    }
}

/// One field a kind accepts in the graph file.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: FieldType,
    pub required: bool,
    /// One line for the README and error hints.
    pub doc: &'static str,
}

/// A problem with one resource's fields, found by its constructor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// The field at fault, so the parser can point at its position.
    pub field: Option<&'static str>,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field: Some(field),
            message: message.into(),
        }
    }
}

/// Builds a resource from its type-checked fields, checking their values.
pub type BuildFn = fn(name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError>;

/// Builds one resource that checks and applies several resources of one
/// kind together (`(name, params)` each, already validated one by one by
/// [`BuildFn`]), so that, say, twenty packages take the package manager's
/// lock once. The engine decides which resources go together (mgmt's
/// autogroup); the kind only says whether it can.
pub type GroupFn = fn(members: &[(String, Mapping)]) -> Result<Box<dyn Resource>, FieldError>;

/// Everything the graph layer and the engine need to know about a kind.
pub struct KindSpec {
    /// Canonical lowercase name, as written in `resources:`.
    pub kind: &'static str,
    /// The fields it accepts besides `name` and `meta`.
    pub fields: &'static [FieldSpec],
    /// Extra fields it can send along an edge (Send/Recv) besides `fields`.
    pub sends: &'static [FieldSpec],
    /// The `fields` it can receive along an edge: exactly those its
    /// [`Resource::set_field`] accepts. A field a watcher was armed with at
    /// start (`file.path`, `exec.watchcmd`, `timer.interval`) is left out:
    /// receiving it would change what is applied but not what is watched.
    pub receives: &'static [&'static str],
    /// Builds the resource from type-checked fields; checks their values.
    pub build: BuildFn,
    /// Set when several resources of this kind can be applied as one.
    pub group: Option<GroupFn>,
}

impl KindSpec {
    /// The field `name` as a sender sees it (own fields and extra sends).
    pub fn send_field(&self, name: &str) -> Option<&'static FieldSpec> {
        self.fields
            .iter()
            .chain(self.sends)
            .find(|f| f.name == name)
    }

    /// The field `name` as a receiver sees it; `None` if it cannot receive.
    pub fn recv_field(&self, name: &str) -> Option<&'static FieldSpec> {
        self.fields
            .iter()
            .find(|f| f.name == name && self.receives.contains(&f.name))
    }
}

/// Every kind this build knows, in the order `--help` and errors list them.
pub static KINDS: &[&KindSpec] = &[
    &file::SPEC,
    &exec::SPEC,
    &noop::SPEC,
    &msg::SPEC,
    &timer::SPEC,
    &password::SPEC,
    &kv::SPEC,
    &pkg::SPEC,
    &svc::SPEC,
    &user::SPEC,
    &group::SPEC,
];

/// Looks a kind up by name, case-insensitively.
pub fn lookup(kind: &str) -> Option<&'static KindSpec> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.kind.eq_ignore_ascii_case(kind))
}

/// The known kind names, for error messages.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.kind).collect()
}

/// What a resource gets for one check/apply.
pub struct Ctx {
    /// `kind[name]`, for logs.
    pub id: String,
    /// Check only: report what would change, change nothing.
    pub noop: bool,
    /// A refresh notification arrived along a `notify: true` edge.
    pub refresh: bool,
    /// Cancelled when the engine stops or the resource is removed.
    pub cancel: CancellationToken,
    /// Prefix for every filesystem path the resource touches (`/` normally;
    /// a per-host root when many hosts share one process).
    pub root: PathBuf,
}

/// Outcome of a check/apply that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Already in the desired state; nothing was (or would be) done.
    Ok,
    /// Something was changed (or, in noop mode, would have been).
    Changed,
}

/// A check/apply or watch failure, reported with the resource's id.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{0}")]
    Failed(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A path that could not be reached or acted on without following a
    /// link (or another name) the graph did not ask for.
    #[error(transparent)]
    Path(#[from] path::PathError),
}

impl ResourceError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ResourceError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Sends an event to the engine: "something changed outside, check me".
/// The channel has capacity one, so a burst of events collapses into one
/// pending check; senders use `try_send` and ignore `Full`.
pub type EventTx = mpsc::Sender<()>;

/// A resource the engine can check, apply and watch.
#[async_trait::async_trait]
pub trait Resource: Send + Sync + 'static {
    /// Checks the state; unless `ctx.noop`, makes it so.
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError>;

    /// A future that watches for outside changes and sends an event for each,
    /// until it is dropped. `None` when the kind has nothing to watch.
    fn watcher(
        &self,
        _root: &std::path::Path,
        _events: EventTx,
    ) -> Option<BoxFuture<'static, Result<(), ResourceError>>> {
        None
    }

    /// The current value of a field, for Send/Recv.
    fn get_field(&self, field: &str) -> Option<Value>;

    /// Sets a field received along an edge; the engine checked the type.
    /// Must accept every field in its kind's [`KindSpec::receives`].
    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError>;
}

/// Kinds that manage the host itself (its accounts, packages, services)
/// have nothing of their own under a per-host root (many emulated hosts in
/// one process), so they refuse to run there rather than change the host.
pub(crate) fn host_only(ctx: &Ctx, what: &str) -> Result<(), ResourceError> {
    if ctx.root == std::path::Path::new("/") {
        return Ok(());
    }
    Err(ResourceError::Failed(format!(
        "{} manages {what} and cannot run under the per-host root {} (hint: apply it with mgmt run on the host itself)",
        ctx.id,
        ctx.root.display()
    )))
}

/// Reads an optional string field from type-checked params.
pub(crate) fn str_field(params: &Mapping, name: &str) -> Option<String> {
    params.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// Reads an optional boolean field from type-checked params.
pub(crate) fn bool_field(params: &Mapping, name: &str) -> Option<bool> {
    params.get(name).and_then(Value::as_bool)
}

/// Reads an optional integer field from type-checked params.
pub(crate) fn int_field(params: &Mapping, name: &str) -> Option<i64> {
    params.get(name).and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid value of `field`, for a kind whose fields need one.
    fn sample(kind: &str, field: &FieldSpec) -> Value {
        match (kind, field.name, field.ty) {
            ("file", "path", _) => "/tmp/mgmt-sample".into(),
            ("file", "mode", _) => "0644".into(),
            ("file" | "user" | "group", "state", _) => "absent".into(),
            ("user", "home" | "shell", _) => "/bin/sh".into(),
            ("pkg", "state", _) => "installed".into(),
            ("svc", "state", _) => "running".into(),
            ("svc", "startup", _) => "enabled".into(),
            ("pkg", "version", _) => "1.0-1".into(),
            (_, _, FieldType::Str) => "true".into(),
            (_, _, FieldType::Int) => 5.into(),
            (_, _, FieldType::Bool) => true.into(),
            (_, _, FieldType::StrList) => Value::Sequence(vec!["root".into()]),
        }
    }

    // See: #2 (the validator accepted `recv:` into file.state and
    // exec.timeout, which set_field then refused at run time)
    #[test]
    fn every_receivable_field_is_accepted_at_run_time() {
        for spec in KINDS {
            for name in spec.receives {
                assert!(
                    spec.fields.iter().any(|f| f.name == *name),
                    "{}: receives unknown field {name}",
                    spec.kind
                );
            }
            let mut params = Mapping::new();
            for f in spec.fields.iter().filter(|f| f.required) {
                params.insert(f.name.into(), sample(spec.kind, f));
            }
            let name = match spec.kind {
                "file" => "/tmp/mgmt-sample",
                _ => "mgmt-sample",
            };
            let mut r =
                (spec.build)(name, &params).unwrap_or_else(|e| panic!("{}: build: {e}", spec.kind));
            for f in spec.fields {
                let accepted = r.set_field(f.name, sample(spec.kind, f));
                // What the validator lets through must work at run time.
                if spec.recv_field(f.name).is_some() {
                    assert!(
                        accepted.is_ok(),
                        "{}.{}: the validator accepts recv but set_field says {:?}",
                        spec.kind,
                        f.name,
                        accepted
                    );
                }
            }
        }
    }
}
