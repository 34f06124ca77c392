//! `noop`: does nothing; useful as an anchor for edges. Logs refreshes.

use serde_yaml_ng::{Mapping, Value};

use super::{
    str_field, Checked, Ctx, FieldError, FieldSpec, FieldType, KindSpec, Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "noop",
    fields: &[FieldSpec {
        name: "comment",
        ty: FieldType::Str,
        required: false,
        doc: "free text",
    }],
    sends: &[],
    receives: &["comment"],
    build,
    group: None,
};

struct Noop {
    comment: Option<String>,
}

fn build(_name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    Ok(Box::new(Noop {
        comment: str_field(params, "comment"),
    }))
}

#[async_trait::async_trait]
impl Resource for Noop {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        if ctx.refresh {
            tracing::info!("{}: received a refresh", ctx.id);
        }
        Ok(Checked::Ok)
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        match field {
            "comment" => self.comment.clone().map(Value::String),
            _ => None,
        }
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        match field {
            "comment" => self.comment = value.as_str().map(str::to_owned),
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("noop has no field {field}"),
                })
            }
        }
        Ok(())
    }
}
