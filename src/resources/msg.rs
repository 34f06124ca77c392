//! `msg`: logs its `body` when applied (once per body), and logs refreshes.

use serde_yaml_ng::{Mapping, Value};

use super::{
    str_field, Checked, Ctx, FieldError, FieldSpec, FieldType, KindSpec, Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "msg",
    fields: &[FieldSpec {
        name: "body",
        ty: FieldType::Str,
        required: false,
        doc: "text logged when applied",
    }],
    sends: &[],
    receives: &["body"],
    build,
    group: None,
};

struct Msg {
    body: String,
    /// The body last logged: logging again would be a change.
    logged: Option<String>,
}

fn build(_name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    Ok(Box::new(Msg {
        body: str_field(params, "body").unwrap_or_default(),
        logged: None,
    }))
}

#[async_trait::async_trait]
impl Resource for Msg {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        if ctx.refresh {
            tracing::info!("{}: received a refresh", ctx.id);
        }
        if self.logged.as_deref() == Some(self.body.as_str()) && !ctx.refresh {
            return Ok(Checked::Ok);
        }
        if ctx.noop {
            tracing::info!("{}: would log: {}", ctx.id, self.body);
        } else {
            tracing::info!("{}: {}", ctx.id, self.body);
            self.logged = Some(self.body.clone());
        }
        Ok(Checked::Changed)
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        (field == "body").then(|| Value::String(self.body.clone()))
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        match (field, value) {
            ("body", Value::String(s)) => self.body = s,
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("msg cannot receive {field}"),
                })
            }
        }
        Ok(())
    }
}
