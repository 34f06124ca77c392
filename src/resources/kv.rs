//! `kv`: a named value a host publishes for the others (issue #15).
//!
//! Exported as `@@NAME`, it puts this host's `value` in the store, where
//! every host's templates read it with `values("NAME")`; that is the whole
//! of its job, done by the export, so applying it here changes nothing. A
//! `kv` without `@@` is a value only this graph sees in logs. Reading the
//! values and re-rendering when they change belong to the run, not here.

use serde_yaml_ng::{Mapping, Value};

use super::{
    str_field, Checked, Ctx, FieldError, FieldSpec, FieldType, KindSpec, Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "kv",
    fields: &[FieldSpec {
        name: "value",
        ty: FieldType::Str,
        required: true,
        doc: "the value published under the name, e.g. value: \"{{ facts.default_ipv4 }}\"",
    }],
    sends: &[],
    receives: &["value"],
    build,
    group: None,
};

struct Kv {
    value: String,
}

fn build(_name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    Ok(Box::new(Kv {
        value: str_field(params, "value").unwrap_or_default(),
    }))
}

#[async_trait::async_trait]
impl Resource for Kv {
    async fn check_apply(&mut self, _ctx: &Ctx) -> Result<Checked, ResourceError> {
        Ok(Checked::Ok)
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        (field == "value").then(|| Value::String(self.value.clone()))
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        match (field, value.as_str()) {
            ("value", Some(v)) => self.value = v.to_owned(),
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("kv cannot receive {field}"),
                })
            }
        }
        Ok(())
    }
}
