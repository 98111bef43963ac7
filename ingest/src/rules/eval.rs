//! Evaluation of rule expressions over a JSON payload and the publish's context.
//!
//! Semantics (in the spirit of AWS IoT SQL, written down here because tests rely on them):
//! - A path to a field that is absent is *undefined* (`None`). Undefined propagates through arithmetic,
//!   comparisons and functions; a SELECT item that is undefined is left out of the output; a WHERE that is
//!   undefined does not match. `x IS NULL` is true for JSON `null` *and* for undefined; `IS NOT NULL` is its negation.
//! - Numbers: integer arithmetic when both sides are integers and the result fits in `i64` and, for `/`,
//!   divides exactly; otherwise 64-bit floating point. Division or remainder by zero is an error.
//! - `=` and `<>` compare JSON values (numbers by value, so `1 = 1.0`); values of different types are unequal.
//!   `<`, `<=`, `>`, `>=` compare two numbers or two strings; anything else is an error.
//! - `AND`, `OR`, `NOT` take booleans (or undefined: `false AND undefined` is false, `true OR undefined` is true,
//!   otherwise undefined); anything else is an error, and so is a WHERE that yields a non-boolean.
//! - `+` on two strings concatenates. Other operator/type mismatches are errors.
//!
//! Errors are data: the caller routes the publish to the rule's error action with the message.

use serde_json::Value;

use super::sql::{BinaryOp, Expr, Function, PathStep};

/// What an expression sees besides the payload.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub topic: &'a str,
    pub client_id: &'a str,
    /// Arrival time of the publish, epoch milliseconds.
    pub arrival_ms: i64,
}

/// An evaluation error: a reason for the error action.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

/// A value, or `None` for undefined.
pub type Val = Option<Value>;

pub fn eval(expr: &Expr, payload: &Value, ctx: &Context<'_>) -> Result<Val, EvalError> {
    Ok(match expr {
        Expr::Literal(v) => Some(v.clone()),
        Expr::Path(steps) => lookup(payload, steps).cloned(),
        Expr::Call(f, args) => call(*f, args, ctx)?,
        Expr::Neg(e) => match eval(e, payload, ctx)? {
            None => None,
            Some(Value::Number(n)) => Some(negate(&n)?),
            Some(other) => {
                return Err(EvalError(format!("cannot negate {}", describe(&other))));
            }
        },
        Expr::Not(e) => match eval(e, payload, ctx)? {
            None => None,
            Some(Value::Bool(b)) => Some(Value::Bool(!b)),
            Some(other) => {
                return Err(EvalError(format!(
                    "NOT needs a boolean, got {}",
                    describe(&other)
                )));
            }
        },
        Expr::IsNull { expr, negated } => {
            let is_null = matches!(eval(expr, payload, ctx)?, None | Some(Value::Null));
            Some(Value::Bool(is_null != *negated))
        }
        Expr::Binary(l, BinaryOp::And, r) => {
            let a = boolean(eval(l, payload, ctx)?, "AND")?;
            if a == Some(false) {
                return Ok(Some(Value::Bool(false)));
            }
            let b = boolean(eval(r, payload, ctx)?, "AND")?;
            match (a, b) {
                (_, Some(false)) => Some(Value::Bool(false)),
                (Some(true), Some(true)) => Some(Value::Bool(true)),
                _ => None,
            }
        }
        Expr::Binary(l, BinaryOp::Or, r) => {
            let a = boolean(eval(l, payload, ctx)?, "OR")?;
            if a == Some(true) {
                return Ok(Some(Value::Bool(true)));
            }
            let b = boolean(eval(r, payload, ctx)?, "OR")?;
            match (a, b) {
                (_, Some(true)) => Some(Value::Bool(true)),
                (Some(false), Some(false)) => Some(Value::Bool(false)),
                _ => None,
            }
        }
        Expr::Binary(l, op, r) => {
            let (Some(a), Some(b)) = (eval(l, payload, ctx)?, eval(r, payload, ctx)?) else {
                return Ok(None);
            };
            Some(binary(&a, *op, &b)?)
        }
    })
}

/// Evaluate a WHERE condition: true, false (including undefined), or an error for a non-boolean.
pub fn condition(expr: &Expr, payload: &Value, ctx: &Context<'_>) -> Result<bool, EvalError> {
    match eval(expr, payload, ctx)? {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(EvalError(format!(
            "WHERE must be a boolean condition, got {}",
            describe(&other)
        ))),
    }
}

/// Follow a path into a JSON value.
pub fn lookup<'v>(mut value: &'v Value, steps: &[PathStep]) -> Option<&'v Value> {
    for step in steps {
        value = match step {
            PathStep::Field(name) => value.as_object()?.get(name)?,
            PathStep::Index(i) => value.as_array()?.get(*i)?,
        };
    }
    Some(value)
}

fn call(f: Function, args: &[Expr], ctx: &Context<'_>) -> Result<Val, EvalError> {
    Ok(match f {
        Function::Topic => match args.first() {
            None => Some(Value::String(ctx.topic.to_string())),
            Some(Expr::Literal(Value::Number(n))) => {
                let n = n.as_u64().and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
                if n == 0 {
                    None
                } else {
                    ctx.topic
                        .split('/')
                        .nth(n - 1)
                        .map(|level| Value::String(level.to_string()))
                }
            }
            // The parser only lets literal level numbers through.
            Some(_) => return Err(EvalError("topic(n) takes a literal level number".into())),
        },
        Function::ClientId => Some(Value::String(ctx.client_id.to_string())),
        Function::Timestamp => Some(Value::from(ctx.arrival_ms)),
        Function::NewUuid => Some(Value::String(uuid::Uuid::new_v4().to_string())),
    })
}

fn boolean(v: Val, op: &str) -> Result<Option<bool>, EvalError> {
    match v {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(EvalError(format!(
            "{op} needs booleans, got {}",
            describe(&other)
        ))),
    }
}

fn binary(a: &Value, op: BinaryOp, b: &Value) -> Result<Value, EvalError> {
    use BinaryOp::*;
    match op {
        Eq => Ok(Value::Bool(equal(a, b))),
        NotEq => Ok(Value::Bool(!equal(a, b))),
        Lt | LtEq | Gt | GtEq => {
            let ord = match (a, b) {
                (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
                (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                _ => None,
            };
            let Some(ord) = ord else {
                return Err(EvalError(format!(
                    "cannot compare {} {op} {}",
                    describe(a),
                    describe(b)
                )));
            };
            Ok(Value::Bool(match op {
                Lt => ord.is_lt(),
                LtEq => ord.is_le(),
                Gt => ord.is_gt(),
                _ => ord.is_ge(),
            }))
        }
        Add if a.is_string() && b.is_string() => Ok(Value::String(format!(
            "{}{}",
            a.as_str().unwrap_or_default(),
            b.as_str().unwrap_or_default()
        ))),
        Add | Sub | Mul | Div | Rem => {
            let (Value::Number(x), Value::Number(y)) = (a, b) else {
                return Err(EvalError(format!(
                    "cannot compute {} {op} {}",
                    describe(a),
                    describe(b)
                )));
            };
            arithmetic(x, op, y)
        }
        And | Or => Err(EvalError(format!("{op} evaluated out of place"))),
    }
}

fn arithmetic(x: &serde_json::Number, op: BinaryOp, y: &serde_json::Number) -> Result<Value, EvalError> {
    use BinaryOp::*;
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        if matches!(op, Div | Rem) && b == 0 {
            return Err(EvalError(format!("division by zero in {a} {op} {b}")));
        }
        let exact = match op {
            Add => a.checked_add(b),
            Sub => a.checked_sub(b),
            Mul => a.checked_mul(b),
            Div if a.checked_rem(b) == Some(0) => a.checked_div(b),
            Div => None,
            Rem => a.checked_rem(b),
            _ => None,
        };
        if let Some(v) = exact {
            return Ok(Value::from(v));
        }
    }
    let (Some(a), Some(b)) = (x.as_f64(), y.as_f64()) else {
        return Err(EvalError(format!("cannot compute {x} {op} {y}")));
    };
    if matches!(op, Div | Rem) && b == 0.0 {
        return Err(EvalError(format!("division by zero in {x} {op} {y}")));
    }
    let v = match op {
        Add => a + b,
        Sub => a - b,
        Mul => a * b,
        Div => a / b,
        _ => a % b,
    };
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .ok_or_else(|| EvalError(format!("{x} {op} {y} is not a finite number")))
}

fn negate(n: &serde_json::Number) -> Result<Value, EvalError> {
    if let Some(i) = n.as_i64().and_then(i64::checked_neg) {
        return Ok(Value::from(i));
    }
    n.as_f64()
        .and_then(|f| serde_json::Number::from_f64(-f))
        .map(Value::Number)
        .ok_or_else(|| EvalError(format!("cannot negate {n}")))
}

fn compare_numbers(x: &serde_json::Number, y: &serde_json::Number) -> Option<std::cmp::Ordering> {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return Some(a.cmp(&b));
    }
    x.as_f64()?.partial_cmp(&y.as_f64()?)
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y).is_some_and(|o| o.is_eq()),
        _ => a == b,
    }
}

/// A short description of a value for error messages: its type and, when short, the value.
pub fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".into(),
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let text = v.to_string();
    if text.chars().count() <= 40 {
        format!("{kind} {text}")
    } else {
        kind.to_string()
    }
}
