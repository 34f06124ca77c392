//! `svc`: a systemd unit, running or stopped, enabled or disabled at boot;
//! a refresh along a `notify: true` edge restarts it (or reloads it).
//!
//! The state is read with `systemctl show` and changed with `systemctl
//! start|stop|enable|disable|restart|reload`, each run with an argument
//! vector. A unit that does not exist or fails to start is an error that
//! carries its last log lines (`journalctl -u UNIT -n 10`).
//!
//! The watcher listens to systemd's signals on the system D-Bus (with the
//! `zbus` crate): it subscribes to the manager, so a change of the unit
//! (`PropertiesChanged` on its object path, or a job of its ending) is an
//! event at once, and a service stopped by hand is started again without
//! any polling. A signal that the unit settled where the last check left
//! it is mgmt's own echo and no event: a unit that fails to start would
//! otherwise be started again on each of its failures, forever. (systemd's
//! private socket, `/run/systemd/private`, needs no bus daemon, but its
//! signals name a well-known sender where D-Bus wants a unique name, which
//! zbus refuses.) What this does not handle: user
//! units (`systemctl --user`), and units of other init systems.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde_yaml_ng::{Mapping, Value};

use super::argv::{self, words};
use super::{
    bool_field, str_field, Checked, Ctx, EventTx, FieldError, FieldSpec, FieldType, KindSpec,
    Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "svc",
    fields: &[
        FieldSpec {
            name: "state",
            ty: FieldType::Str,
            required: false,
            doc: "running or stopped (absent: left as it is)",
        },
        FieldSpec {
            name: "startup",
            ty: FieldType::Str,
            required: false,
            doc: "enabled or disabled at boot (absent: left as it is)",
        },
        FieldSpec {
            name: "reload",
            ty: FieldType::Bool,
            required: false,
            doc: "a refresh reloads the unit instead of restarting it",
        },
    ],
    sends: &[],
    receives: &["state", "startup"],
    build,
    group: None,
};

struct Svc {
    /// The unit's full name (`nginx` becomes `nginx.service`).
    unit: String,
    running: Option<bool>,
    enabled: Option<bool>,
    reload: bool,
    /// The unit's ActiveState as the last check left it, shared with the
    /// watcher: a signal that the unit settled in this same state is the
    /// echo of mgmt's own work (a failed start ends `failed`, and starting
    /// it again on that echo would loop), not a change from outside.
    settled: Arc<Mutex<Option<String>>>,
}

fn build(name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    let unit = unit_name(name)?;
    Ok(Box::new(Svc {
        unit,
        running: read_running(str_field(params, "state").as_deref())?,
        enabled: read_startup(str_field(params, "startup").as_deref())?,
        reload: bool_field(params, "reload").unwrap_or(false),
        settled: Arc::default(),
    }))
}

/// systemd's unit name characters; a name without a type is a service.
fn unit_name(name: &str) -> Result<String, FieldError> {
    let ok = !name.is_empty()
        && !name.starts_with(['-', '.'])
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.\\@-".contains(c));
    if !ok {
        return Err(FieldError::new(
            "name",
            format!("{name:?} is not a unit name; expected letters, digits and :_.@- e.g. nginx or nginx.service"),
        ));
    }
    Ok(if name.contains('.') {
        name.to_owned()
    } else {
        format!("{name}.service")
    })
}

fn read_running(s: Option<&str>) -> Result<Option<bool>, FieldError> {
    match s {
        None => Ok(None),
        Some("running") => Ok(Some(true)),
        Some("stopped") => Ok(Some(false)),
        Some(o) => Err(FieldError::new(
            "state",
            format!("state must be running or stopped, not {o:?}"),
        )),
    }
}

fn read_startup(s: Option<&str>) -> Result<Option<bool>, FieldError> {
    match s {
        None => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(o) => Err(FieldError::new(
            "startup",
            format!("startup must be enabled or disabled, not {o:?}"),
        )),
    }
}

/// The unit's D-Bus object path: every byte but a letter or digit escaped
/// as `_xx` (systemd's bus path escaping).
fn object_path(unit: &str) -> String {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    for b in unit.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

/// What `systemctl show` says of the unit.
struct Shown {
    load: String,
    active: String,
    file: String,
}

impl Svc {
    async fn show(&self, ctx: &Ctx) -> Result<Shown, ResourceError> {
        let args = words([
            "show",
            "--property=LoadState,ActiveState,UnitFileState",
            "--",
            self.unit.as_str(),
        ]);
        let ran = argv::run("systemctl", &args, &[], &ctx.cancel).await?;
        if !ran.ok() {
            return Err(ResourceError::Failed(format!(
                "cannot read the state of {}: systemctl show exited with code {}: {} (hint: is systemd this host's init?)",
                self.unit,
                ran.code,
                ran.tail()
            )));
        }
        let get = |key: &str| {
            ran.stdout
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Shown {
            load: get("LoadState"),
            active: get("ActiveState"),
            file: get("UnitFileState"),
        })
    }

    /// The unit's last log lines, joined into one line.
    async fn last_logs(&self, ctx: &Ctx) -> String {
        let args = words([
            "-u",
            self.unit.as_str(),
            "-n",
            "10",
            "--no-pager",
            "-o",
            "short",
        ]);
        match argv::run("journalctl", &args, &[], &ctx.cancel).await {
            Ok(ran) if !ran.stdout.trim().is_empty() => {
                let lines: Vec<&str> = ran
                    .stdout
                    .lines()
                    .filter(|l| !l.starts_with("--"))
                    .collect();
                format!("; its last log lines: {}", lines.join(" | "))
            }
            _ => "; it has no log lines (journalctl -u found none)".into(),
        }
    }

    /// `systemctl VERB UNIT`; a failure carries the unit's last log lines.
    async fn systemctl(&self, verb: &str, ctx: &Ctx) -> Result<(), ResourceError> {
        let args = words([verb, "--", self.unit.as_str()]);
        let ran = argv::run("systemctl", &args, &[], &ctx.cancel).await?;
        if ran.ok() {
            tracing::info!("{}: {} {}", ctx.id, past(verb), self.unit);
            return Ok(());
        }
        Err(ResourceError::Failed(format!(
            "cannot {verb} {}: systemctl exited with code {}: {}{}",
            self.unit,
            ran.code,
            ran.tail(),
            self.last_logs(ctx).await
        )))
    }

    /// Notes the state the unit is in now (after this check's work).
    async fn remember(&self, ctx: &Ctx) {
        let active = self.show(ctx).await.ok().map(|s| s.active);
        if let Ok(mut settled) = self.settled.lock() {
            *settled = active;
        }
    }

    /// The systemctl verbs that make the unit so, in order.
    fn verbs(&self, now: &Shown, refresh: bool) -> Vec<&'static str> {
        let mut verbs = Vec::new();
        match (self.enabled, now.file.as_str()) {
            (Some(true), f) if f != "enabled" => verbs.push("enable"),
            (Some(false), "enabled") => verbs.push("disable"),
            _ => {}
        }
        let active = matches!(now.active.as_str(), "active" | "activating" | "reloading");
        match (self.running, active) {
            (Some(true), false) => verbs.push("start"),
            (Some(false), true) => verbs.push("stop"),
            // A refresh restarts a running unit it did not just start.
            (Some(true) | None, true) if refresh => {
                verbs.push(if self.reload { "reload" } else { "restart" })
            }
            _ => {}
        }
        verbs
    }
}

/// Whether a signal from systemd says the unit changed in a way the last
/// check did not leave it: its ActiveState settled (`active`, `inactive`,
/// `failed`) somewhere else, or unit files changed (enable/disable by hand).
fn outside_change(msg: &zbus::Message, path: &str, settled: &Mutex<Option<String>>) -> bool {
    let header = msg.header();
    match header.member().map(|m| m.as_str()) {
        Some("UnitFilesChanged") => true,
        Some("PropertiesChanged") if header.path().is_some_and(|p| p.as_str() == path) => {
            type Changed<'a> = (&'a str, HashMap<&'a str, zbus::Variant<'a>>, Vec<&'a str>);
            let body = msg.body();
            let Ok((iface, changed, _)) = body.deserialize::<Changed<'_>>() else {
                return false;
            };
            let Some(zbus::Variant::Str(state)) = changed.get("ActiveState") else {
                return false;
            };
            let state = state.as_str();
            iface == "org.freedesktop.systemd1.Unit"
                && matches!(state, "active" | "inactive" | "failed")
                && settled.lock().map_or(true, |s| s.as_deref() != Some(state))
        }
        _ => false,
    }
}

fn past(verb: &str) -> &str {
    match verb {
        "start" => "started",
        "stop" => "stopped",
        "enable" => "enabled",
        "disable" => "disabled",
        "restart" => "restarted",
        "reload" => "reloaded",
        other => other,
    }
}

#[async_trait::async_trait]
impl Resource for Svc {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        super::host_only(ctx, "the host's own services")?;
        let now = self.show(ctx).await?;
        if now.load != "loaded" {
            return Err(ResourceError::Failed(format!(
                "unit {} is {} (hint: write its unit file under /etc/systemd/system first, e.g. with a file resource and an edge to this svc){}",
                self.unit,
                if now.load.is_empty() { "unknown" } else { now.load.as_str() },
                self.last_logs(ctx).await
            )));
        }
        let verbs = self.verbs(&now, ctx.refresh);
        if verbs.is_empty() {
            if let Ok(mut settled) = self.settled.lock() {
                *settled = Some(now.active);
            }
            return Ok(Checked::Ok);
        }
        if ctx.noop {
            for verb in &verbs {
                tracing::info!("{}: would {verb} {}", ctx.id, self.unit);
            }
            return Ok(Checked::Changed);
        }
        let mut done = Ok(Checked::Changed);
        for verb in verbs {
            if let Err(e) = self.systemctl(verb, ctx).await {
                done = Err(e);
                break;
            }
        }
        self.remember(ctx).await;
        done
    }

    fn watcher(
        &self,
        _root: &std::path::Path,
        events: EventTx,
    ) -> Option<futures::future::BoxFuture<'static, Result<(), ResourceError>>> {
        let path = object_path(&self.unit);
        let unit = self.unit.clone();
        let settled = self.settled.clone();
        Some(Box::pin(async move {
            let failed = |e: zbus::Error| {
                ResourceError::Failed(format!(
                    "cannot watch {unit} on the system D-Bus: {e} (hint: svc needs systemd as init and a running system bus, dbus-daemon or dbus-broker)"
                ))
            };
            let conn = zbus::Connection::system().await.map_err(failed)?;
            let rule = "type='signal',sender='org.freedesktop.systemd1'";
            let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, None)
                .await
                .map_err(failed)?;
            // systemd sends unit signals on the bus only while someone is
            // subscribed; this connection's subscription ends with it.
            conn.call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "Subscribe",
                &(),
            )
            .await
            .map_err(failed)?;
            while let Some(msg) = stream.next().await {
                let msg = msg.map_err(failed)?;
                if outside_change(&msg, &path, &settled) {
                    let _ = events.try_send(());
                }
            }
            Err(ResourceError::Failed(format!(
                "cannot watch {unit}: systemd closed its bus connection"
            )))
        }))
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        let s = |v: &str| Some(Value::String(v.into()));
        match field {
            "state" => self
                .running
                .and_then(|r| s(if r { "running" } else { "stopped" })),
            "startup" => self
                .enabled
                .and_then(|e| s(if e { "enabled" } else { "disabled" })),
            "reload" => Some(Value::Bool(self.reload)),
            _ => None,
        }
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        match field {
            "state" => self.running = read_running(value.as_str())?,
            "startup" => self.enabled = read_startup(value.as_str())?,
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("svc cannot receive {field}"),
                })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_and_their_bus_paths() {
        assert_eq!(unit_name("nginx").unwrap(), "nginx.service");
        assert_eq!(unit_name("a@b.socket").unwrap(), "a@b.socket");
        assert!(unit_name("-x").is_err());
        assert!(unit_name("a b").is_err());
        assert_eq!(
            object_path("mgmt-it.service"),
            "/org/freedesktop/systemd1/unit/mgmt_2dit_2eservice"
        );
    }
}
