//! `password`: generates a random secret once and keeps it for the life of
//! the process; it sends it along an edge as its `password` field. The secret
//! is never logged.

use rand::distr::{Alphanumeric, SampleString};
use serde_yaml_ng::{Mapping, Value};

use super::{
    int_field, Checked, Ctx, FieldError, FieldSpec, FieldType, KindSpec, Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "password",
    fields: &[FieldSpec {
        name: "length",
        ty: FieldType::Int,
        required: false,
        doc: "number of characters (default 64)",
    }],
    sends: &[FieldSpec {
        name: "password",
        ty: FieldType::Str,
        required: false,
        doc: "the generated secret",
    }],
    receives: &["length"],
    build,
    group: None,
};

struct Password {
    length: usize,
    secret: Option<String>,
}

fn build(_name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    let length = int_field(params, "length").unwrap_or(64);
    if !(1..=4096).contains(&length) {
        return Err(FieldError::new(
            "length",
            format!("length must be between 1 and 4096, not {length}"),
        ));
    }
    Ok(Box::new(Password {
        length: length as usize,
        secret: None,
    }))
}

#[async_trait::async_trait]
impl Resource for Password {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        if self.secret.as_ref().is_some_and(|s| s.len() == self.length) {
            return Ok(Checked::Ok);
        }
        if ctx.noop {
            tracing::info!(
                "{}: would generate a password of {} characters",
                ctx.id,
                self.length
            );
            return Ok(Checked::Changed);
        }
        self.secret = Some(Alphanumeric.sample_string(&mut rand::rng(), self.length));
        tracing::info!(
            "{}: generated a password of {} characters",
            ctx.id,
            self.length
        );
        Ok(Checked::Changed)
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        match field {
            "password" => self.secret.clone().map(Value::String),
            "length" => Some(Value::from(self.length as u64)),
            _ => None,
        }
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        match (field, value.as_u64()) {
            ("length", Some(n)) if (1..=4096).contains(&n) => self.length = n as usize,
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("password cannot receive {field}"),
                })
            }
        }
        Ok(())
    }
}
