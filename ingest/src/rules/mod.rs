//! The rules engine: AWS IoT-style rules that turn one MQTT publish into zero or more stream records.
//!
//! A rule is `SELECT <items> FROM '<topic filter>' [WHERE <condition>]` (see [`sql`] for the grammar and
//! [`eval`] for the semantics) plus an action: a target stream and a partition-key template such as
//! `${topic(2)}`, `${clientid()}` or `dev-${device.id}` (each `${...}` holds any rule expression, evaluated
//! against the incoming payload), and an error action: a stream that receives the publishes this rule could
//! not turn into a record, with the reason. Several rules may match one publish; each produces its own output.
//!
//! # Output records
//!
//! A matched rule's record is the JSON object of the selected fields (`*` copies every field of the payload;
//! later items override earlier ones of the same name; undefined items are left out; a payload that is JSON but
//! not an object is selected by `*` as the field `value`), with **lineage fields added to the object**:
//!
//! | field | meaning |
//! |---|---|
//! | `_topic` | the MQTT topic of the publish |
//! | `_client_id` | the MQTT client id of the publisher |
//! | `_arrival_time` | when the gateway received the publish, epoch milliseconds (integer) |
//!
//! These three names are reserved: a payload field of the same name is overwritten. Delivery turns them into
//! the columns `_topic`, `_client_id`, `_arrival_time`; `_partition_key`, `_shard_id` and `_sequence_number`
//! come from the stream record itself.
//!
//! # Error records
//!
//! A publish that a matching rule cannot turn into a record (payload not JSON, over `payload_bytes_max`, an
//! evaluation error such as comparing a string with a number in WHERE, an empty or over-long partition key, an
//! output over the record limit) becomes a record on the rule's error stream, partition key = client id:
//!
//! ```json
//! {"_topic": "...", "_client_id": "...", "_arrival_time": 1700000000000, "rule": "telemetry",
//!  "error": {"kind": "payload_not_json", "message": "expected value at line 1 column 1"},
//!  "payload": "<the payload if UTF-8>" | "payload_base64": "<otherwise>",
//!  "payload_bytes": 11, "payload_truncated": false}
//! ```
//! The payload kept in an error record is cut to [`ERROR_PAYLOAD_BYTES_MAX`].

pub mod eval;
pub mod sql;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use base64::Engine;
use bytes::Bytes;
use freshet_storage::{PARTITION_KEY_CHARS_MAX, PutRecord, StreamName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{IngestError, Result};
use eval::{Context, EvalError};
use sql::{Expr, ParseError, SelectItem, Statement};

/// Most payload bytes copied into an error record.
pub const ERROR_PAYLOAD_BYTES_MAX: usize = 16 * 1024;

/// One rule as written in the configuration (`[[gateway.rules]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A unique name (shown in error records and metrics).
    pub name: String,
    /// `SELECT ... FROM '<topic filter>' [WHERE ...]`.
    pub sql: String,
    /// The target stream.
    pub stream: String,
    /// Partition-key template, e.g. `${topic(2)}`; text outside `${...}` is kept as is.
    pub partition_key: String,
    /// Where this rule's failures go; defaults to the gateway's `error_stream`.
    #[serde(default)]
    pub error_stream: Option<String>,
}

/// A part of a partition-key template.
#[derive(Clone, Debug, PartialEq)]
pub enum TemplatePart {
    Text(String),
    Expr(Expr),
}

/// A parsed `${...}` template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

impl Template {
    /// Parse a template. Error positions are 1-based character positions in `source`.
    pub fn parse(source: &str) -> std::result::Result<Self, ParseError> {
        let chars: Vec<char> = source.chars().collect();
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '$' && chars.get(i + 1) == Some(&'{') {
                let start = i + 2;
                let mut j = start;
                let mut in_string = false;
                while j < chars.len() && (in_string || chars[j] != '}') {
                    if chars[j] == '\'' {
                        in_string = !in_string;
                    }
                    j += 1;
                }
                if j == chars.len() {
                    return Err(ParseError {
                        position: i + 1,
                        reason: "unterminated ${ in template".into(),
                    });
                }
                let inner: String = chars[start..j].iter().collect();
                let expr = sql::parse_expr(&inner).map_err(|e| ParseError {
                    position: start + e.position,
                    reason: e.reason,
                })?;
                if !text.is_empty() {
                    parts.push(TemplatePart::Text(std::mem::take(&mut text)));
                }
                parts.push(TemplatePart::Expr(expr));
                i = j + 1;
            } else {
                text.push(chars[i]);
                i += 1;
            }
        }
        if !text.is_empty() {
            parts.push(TemplatePart::Text(text));
        }
        if parts.is_empty() {
            return Err(ParseError {
                position: 1,
                reason: "the template is empty".into(),
            });
        }
        Ok(Self { parts })
    }

    /// Render against a payload. Undefined or null substitutions are errors (a key must name something).
    pub fn render(&self, payload: &Value, ctx: &Context<'_>) -> std::result::Result<String, EvalError> {
        let undefined =
            || EvalError("a ${...} substitution of the partition key is undefined or null".into());
        let mut out = String::with_capacity(32);
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                // The usual keys (`${topic(2)}`, `${clientid()}`): the text straight from the publish, with no
                // intermediate JSON value.
                TemplatePart::Expr(e) if let Some(text) = context_text(e, ctx) => {
                    out.push_str(text.ok_or_else(undefined)?);
                }
                TemplatePart::Expr(e) => match eval::eval(e, payload, ctx)? {
                    None | Some(Value::Null) => return Err(undefined()),
                    Some(Value::String(s)) => out.push_str(&s),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&v.to_string()),
                    Some(other) => {
                        return Err(EvalError(format!(
                            "a ${{...}} substitution of the partition key is {}, not a scalar",
                            eval::describe(&other)
                        )));
                    }
                },
            }
        }
        Ok(out)
    }

    /// True when the template is text and `topic()`, `topic(n)` and `clientid()` only: the same key for every
    /// publish on one topic from one client.
    fn topic_and_client_only(&self) -> bool {
        let probe = Context {
            topic: "",
            client_id: "",
            arrival_ms: 0,
        };
        self.parts.iter().all(|p| match p {
            TemplatePart::Text(_) => true,
            TemplatePart::Expr(e) => context_text(e, &probe).is_some(),
        })
    }

    /// True when the template needs no payload (only topic/client functions and text).
    fn payload_free(&self) -> bool {
        self.parts.iter().all(|p| match p {
            TemplatePart::Text(_) => true,
            TemplatePart::Expr(e) => expr_payload_free(e),
        })
    }
}

/// The text of `topic()`, `topic(n)` (`None` when the topic has no level `n`) and `clientid()`, as
/// [`eval::eval`] gives it; `None` for any other expression (whatever `ctx` holds).
fn context_text<'c>(e: &Expr, ctx: &Context<'c>) -> Option<Option<&'c str>> {
    use serde_json::Value;
    use sql::Function;
    match e {
        Expr::Call(Function::Topic, args) => match args.as_slice() {
            [] => Some(Some(ctx.topic)),
            [Expr::Literal(Value::Number(n))] => {
                let n = n.as_u64().and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
                Some(n.checked_sub(1).and_then(|i| ctx.topic.split('/').nth(i)))
            }
            _ => None,
        },
        Expr::Call(Function::ClientId, args) if args.is_empty() => Some(Some(ctx.client_id)),
        _ => None,
    }
}

/// True when an expression reads nothing of the payload (literals, functions of the topic, client and clock).
fn expr_payload_free(e: &Expr) -> bool {
    match e {
        Expr::Path(_) => false,
        Expr::Literal(_) => true,
        Expr::Call(_, args) => args.iter().all(expr_payload_free),
        Expr::Neg(e) | Expr::Not(e) => expr_payload_free(e),
        Expr::IsNull { expr, .. } => expr_payload_free(expr),
        Expr::Binary(l, _, r) => expr_payload_free(l) && expr_payload_free(r),
    }
}

/// A checked, ready rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub statement: Statement,
    pub stream: StreamName,
    pub partition_key: Template,
    pub error_stream: StreamName,
    /// `SELECT *[, <payload-free expressions>]` without WHERE and with a partition key that does not read the
    /// payload: the record can be the payload's own bytes plus the added fields (see [`verbatim_record`]).
    verbatim: bool,
}

impl Rule {
    /// Parse and check a rule. Errors name the rule, the field and the position.
    pub fn new(config: &RuleConfig, default_error_stream: &StreamName) -> Result<Self> {
        let bad = |field: &str, e: ParseError| IngestError::Rule {
            rule: config.name.clone(),
            field: field.to_string(),
            position: e.position,
            reason: e.reason,
        };
        let statement = sql::parse_statement(&config.sql).map_err(|e| bad("sql", e))?;
        let partition_key = Template::parse(&config.partition_key).map_err(|e| bad("partition_key", e))?;
        let stream = StreamName::new(config.stream.clone())
            .map_err(|e| IngestError::Config(format!("rule {}: stream: {e}", config.name)))?;
        let error_stream = match &config.error_stream {
            Some(s) => StreamName::new(s.clone())
                .map_err(|e| IngestError::Config(format!("rule {}: error_stream: {e}", config.name)))?,
            None => default_error_stream.clone(),
        };
        let verbatim = verbatim_select(&statement.items)
            && statement.condition.is_none()
            && partition_key.payload_free();
        Ok(Self {
            name: config.name.clone(),
            statement,
            stream,
            partition_key,
            error_stream,
            verbatim,
        })
    }

    pub fn topic_filter(&self) -> &str {
        &self.statement.topic_filter
    }
}

/// One publish as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub client_id: &'a str,
    pub arrival_ms: i64,
    pub payload: &'a [u8],
}

/// What kind of failure an error record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    PayloadNotJson,
    PayloadTooLarge,
    Evaluation,
    PartitionKey,
    RecordTooLarge,
}

/// One record produced for one rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Index of the rule in the rule set.
    pub rule: usize,
    pub stream: StreamName,
    pub record: PutRecord,
    /// `Some` for an error record (on the rule's error stream).
    pub failure: Option<FailureKind>,
}

/// Limits the rule set enforces on what it reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct RuleLimits {
    /// A bigger payload goes to the error action.
    pub payload_bytes_max: usize,
    /// A bigger output record (data + key) goes to the error action.
    pub record_bytes_max: usize,
}

/// All rules of a gateway, in configuration order.
#[derive(Clone, Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    limits: RuleLimits,
}

impl RuleSet {
    /// Parse and check every rule; names must be unique.
    pub fn new(
        configs: &[RuleConfig],
        default_error_stream: &StreamName,
        limits: RuleLimits,
    ) -> Result<Self> {
        let mut seen = HashMap::new();
        let mut rules = Vec::with_capacity(configs.len());
        for c in configs {
            if seen.insert(c.name.clone(), ()).is_some() {
                return Err(IngestError::Config(format!("two rules are named {:?}", c.name)));
            }
            rules.push(Rule::new(c, default_error_stream)?);
        }
        Ok(Self { rules, limits })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every stream a rule writes to (targets and error streams), without duplicates.
    pub fn streams(&self) -> Vec<StreamName> {
        let mut out: Vec<StreamName> = Vec::new();
        for r in &self.rules {
            for s in [&r.stream, &r.error_stream] {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    /// True when some rule's topic filter matches `topic`.
    pub fn any_matches(&self, topic: &str) -> bool {
        self.rules.iter().any(|r| topic_matches(r.topic_filter(), topic))
    }

    /// Apply every rule to one publish. An empty result means no rule matched the topic, or every matching
    /// rule's WHERE was false; `matched` tells them apart (rules whose filter matched).
    pub fn apply(&self, msg: &Message<'_>) -> Applied {
        self.apply_cached(msg, &mut TopicCache::default())
    }

    /// [`RuleSet::apply`], with what depends only on the topic, the client and the arrival time kept in `cache`
    /// from the previous publish (a connection keeps one: devices publish to the same topic again and again).
    pub fn apply_cached(&self, msg: &Message<'_>, cache: &mut TopicCache) -> Applied {
        let mut applied = Applied::default();
        self.apply_into(msg, cache, &mut applied);
        applied
    }

    /// [`RuleSet::apply_cached`] into `applied` (cleared first), so that a connection reuses one `Vec` of outputs.
    pub fn apply_into(&self, msg: &Message<'_>, cache: &mut TopicCache, applied: &mut Applied) {
        applied.matched = 0;
        applied.filtered = 0;
        applied.outputs.clear();
        let ctx = Context {
            topic: msg.topic,
            client_id: msg.client_id,
            arrival_ms: msg.arrival_ms,
        };
        cache.update(self, &ctx);
        // Parsed lazily, once, for all the rules that match the topic.
        let mut parsed: Option<std::result::Result<Value, (FailureKind, String)>> = None;
        for (at, &idx) in cache.matching.iter().enumerate() {
            let rule = &self.rules[idx];
            applied.matched += 1;
            if rule.verbatim
                && parsed.is_none()
                && msg.payload.len() <= self.limits.payload_bytes_max
                && let Some(data) = verbatim_record(
                    &rule.statement.items[1..],
                    msg.payload,
                    &ctx,
                    &cache.lineage,
                    &cache.arrival_text,
                )
            {
                let result = match &cache.keys[at] {
                    Some(key) => key.clone().and_then(|key| self.check_size(key, data)),
                    None => self.key_and_check(rule, &Value::Null, &ctx, data),
                };
                push_output(applied, idx, rule, result, msg);
                continue;
            }
            let payload = parsed.get_or_insert_with(|| {
                if msg.payload.len() > self.limits.payload_bytes_max {
                    Err((
                        FailureKind::PayloadTooLarge,
                        format!(
                            "payload of {} bytes is over the limit of {} bytes",
                            msg.payload.len(),
                            self.limits.payload_bytes_max
                        ),
                    ))
                } else {
                    serde_json::from_slice(msg.payload)
                        .map_err(|e| (FailureKind::PayloadNotJson, format!("payload is not JSON: {e}")))
                }
            });
            let result = match payload {
                Ok(value) => self.apply_rule(rule, value, &ctx),
                Err((kind, message)) => Err((*kind, message.clone())),
            };
            push_output(applied, idx, rule, result, msg);
        }
    }

    /// Select and key one record; `Ok(None)` when WHERE is false.
    fn apply_rule(
        &self,
        rule: &Rule,
        payload: &Value,
        ctx: &Context<'_>,
    ) -> std::result::Result<Option<(String, Bytes)>, (FailureKind, String)> {
        let eval_err = |e: EvalError| (FailureKind::Evaluation, e.0);
        if let Some(cond) = &rule.statement.condition
            && !eval::condition(cond, payload, ctx)
                .map_err(|e| (FailureKind::Evaluation, format!("WHERE: {}", e.0)))?
        {
            return Ok(None);
        }
        let mut out = Map::new();
        for item in &rule.statement.items {
            match item {
                SelectItem::Wildcard => match payload {
                    Value::Object(fields) => {
                        out.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    other => {
                        out.insert("value".into(), other.clone());
                    }
                },
                SelectItem::Expr { expr, name } => {
                    if let Some(v) = eval::eval(expr, payload, ctx).map_err(eval_err)? {
                        out.insert(name.clone(), v);
                    }
                }
            }
        }
        out.insert("_topic".into(), Value::String(ctx.topic.to_string()));
        out.insert("_client_id".into(), Value::String(ctx.client_id.to_string()));
        out.insert("_arrival_time".into(), Value::from(ctx.arrival_ms));
        let data = serde_json::to_vec(&Value::Object(out))
            .map_err(|e| (FailureKind::Evaluation, format!("cannot encode the output: {e}")))?;
        self.key_and_check(rule, payload, ctx, data)
    }

    /// Render the partition key and check the key and the record against the limits.
    fn key_and_check(
        &self,
        rule: &Rule,
        payload: &Value,
        ctx: &Context<'_>,
        data: Vec<u8>,
    ) -> std::result::Result<Option<(String, Bytes)>, (FailureKind, String)> {
        let key = if rule.partition_key.payload_free() {
            rule.partition_key.render(&Value::Null, ctx)
        } else {
            rule.partition_key.render(payload, ctx)
        }
        .map_err(|e| (FailureKind::PartitionKey, e.0))?;
        check_key_chars(&key)?;
        self.check_size(key, data)
    }

    /// Check the record against the size limit and make it `Some((key, data))`.
    fn check_size(
        &self,
        key: String,
        data: Vec<u8>,
    ) -> std::result::Result<Option<(String, Bytes)>, (FailureKind, String)> {
        if data.len() + key.len() > self.limits.record_bytes_max {
            return Err((
                FailureKind::RecordTooLarge,
                format!(
                    "output record of {} bytes is over the limit of {} bytes",
                    data.len() + key.len(),
                    self.limits.record_bytes_max
                ),
            ));
        }
        // A boxed slice becomes `Bytes` without the extra allocation a `Vec` with spare capacity needs (shrinking in
        // place where the allocator can).
        Ok(Some((key, Bytes::from(data.into_boxed_slice()))))
    }
}

/// A partition key must have 1 to [`PARTITION_KEY_CHARS_MAX`] characters.
fn check_key_chars(key: &str) -> std::result::Result<(), (FailureKind, String)> {
    let key_chars = key.chars().count();
    if key_chars == 0 || key_chars > PARTITION_KEY_CHARS_MAX {
        return Err((
            FailureKind::PartitionKey,
            format!("partition key of {key_chars} characters is not within 1-{PARTITION_KEY_CHARS_MAX}"),
        ));
    }
    Ok(())
}

/// What [`RuleSet::apply_cached`] keeps between publishes: everything that depends only on the topic, the client
/// id and the arrival time, worked out again when one of them changes. A cache serves one rule set (a gateway's
/// rules are fixed while it runs).
#[derive(Debug, Default)]
pub struct TopicCache {
    topic: String,
    client_id: String,
    arrival_ms: Option<i64>,
    /// Indices of the rules whose topic filter matches the topic, in rule order.
    matching: Vec<usize>,
    /// Per matching rule: its partition key, checked, when the key is made of `topic(...)`, `clientid()` and text
    /// only (`${topic(2)}`); `None` when it must be rendered per publish.
    keys: Vec<Option<std::result::Result<String, (FailureKind, String)>>>,
    /// The lineage fields as JSON, up to the arrival time's value: `"_topic":"…","_client_id":"…","_arrival_time":`.
    lineage: Vec<u8>,
    /// The arrival time as JSON.
    arrival_text: Vec<u8>,
}

impl TopicCache {
    fn update(&mut self, rules: &RuleSet, ctx: &Context<'_>) {
        if self.arrival_ms != Some(ctx.arrival_ms) {
            self.arrival_ms = Some(ctx.arrival_ms);
            self.arrival_text.clear();
            serde_json::to_writer(&mut self.arrival_text, &ctx.arrival_ms)
                .expect("writing to a Vec does not fail");
        }
        if !self.lineage.is_empty() && self.topic == ctx.topic && self.client_id == ctx.client_id {
            return;
        }
        self.topic.clear();
        self.topic.push_str(ctx.topic);
        self.client_id.clear();
        self.client_id.push_str(ctx.client_id);
        self.matching.clear();
        self.keys.clear();
        for (idx, rule) in rules.rules.iter().enumerate() {
            if topic_matches(rule.topic_filter(), ctx.topic) {
                self.matching.push(idx);
                self.keys
                    .push(rule.partition_key.topic_and_client_only().then(|| {
                        let key = rule
                            .partition_key
                            .render(&Value::Null, ctx)
                            .map_err(|e| (FailureKind::PartitionKey, e.0))?;
                        check_key_chars(&key)?;
                        Ok(key)
                    }));
            }
        }
        self.lineage.clear();
        for (name, value) in [("_topic", ctx.topic), ("_client_id", ctx.client_id)] {
            write_json_str(&mut self.lineage, name);
            self.lineage.push(b':');
            write_json_str(&mut self.lineage, value);
            self.lineage.push(b',');
        }
        self.lineage.extend_from_slice(br#""_arrival_time":"#);
    }
}

/// Add one rule's result to the publish's outputs (a record, nothing when WHERE was false, or an error record).
fn push_output(
    applied: &mut Applied,
    idx: usize,
    rule: &Rule,
    result: std::result::Result<Option<(String, Bytes)>, (FailureKind, String)>,
    msg: &Message<'_>,
) {
    match result {
        Ok(Some((key, data))) => applied.outputs.push(Output {
            rule: idx,
            stream: rule.stream.clone(),
            record: PutRecord::new(key, data),
            failure: None,
        }),
        Ok(None) => applied.filtered += 1,
        Err((kind, message)) => applied.outputs.push(Output {
            rule: idx,
            stream: rule.error_stream.clone(),
            record: error_record(Some(&rule.name), kind, &message, msg),
            failure: Some(kind),
        }),
    }
}

/// The lineage fields every output record carries (reserved names).
const LINEAGE_FIELDS: [&str; 3] = ["_topic", "_client_id", "_arrival_time"];

/// Whether a select list can be answered from the payload's bytes: `*` first, then only expressions that read
/// nothing of the payload, with distinct names that are not lineage names (so that no later item overrides an
/// earlier one except a payload field, which [`verbatim_record`] checks per publish).
fn verbatim_select(items: &[SelectItem]) -> bool {
    let Some((SelectItem::Wildcard, rest)) = items.split_first() else {
        return false;
    };
    let mut names: Vec<&str> = Vec::new();
    for item in rest {
        let SelectItem::Expr { expr, name } = item else {
            return false;
        };
        if !expr_payload_free(expr)
            || names.contains(&name.as_str())
            || LINEAGE_FIELDS.contains(&name.as_str())
        {
            return false;
        }
        names.push(name);
    }
    true
}

/// The record of a verbatim rule (`SELECT *[, payload-free expressions]`, no WHERE) without building a `Value`
/// tree: the payload's own bytes with the expressions' fields (`extra`, the select items after `*`) and the
/// lineage fields appended before its closing brace. The payload is checked by one full parse that accepts
/// exactly what parsing into a `Value` accepts (UTF-8, number ranges, nesting depth) but keeps nothing. `None`
/// when the general path must decide: not a JSON object, not valid JSON (the general path writes the error
/// record), a key written with escapes, a repeated key, a key that an expression or a lineage field overrides,
/// or an expression that fails (the general path keeps the last value of a repeated key, lets later items
/// override earlier ones and reports the error). Nested values are kept exactly as written (number spelling,
/// key order, a repeated key inside a nested object).
fn verbatim_record(
    extra: &[SelectItem],
    payload: &[u8],
    ctx: &Context<'_>,
    lineage: &[u8],
    arrival_text: &[u8],
) -> Option<Vec<u8>> {
    // From the bytes: the parser checks UTF-8 inside strings, and anything else that is not ASCII is no JSON.
    let top: TopKeys = serde_json::from_slice(payload).ok()?;
    let keys = top.keys();
    let repeated = if keys.len() <= 32 {
        keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k))
    } else {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.windows(2).any(|w| w[0] == w[1])
    };
    let overridden = |k: &&str| {
        LINEAGE_FIELDS.contains(k)
            || extra
                .iter()
                .any(|item| matches!(item, SelectItem::Expr { name, .. } if name == k))
    };
    if repeated || keys.iter().any(overridden) {
        return None;
    }
    let body = payload.trim_ascii_end();
    let open = body.strip_suffix(b"}")?;
    // Exact when there are no expressions (the usual `SELECT *`), so the record needs no second allocation.
    let mut data = Vec::with_capacity(open.len() + 1 + lineage.len() + arrival_text.len() + 1);
    data.extend_from_slice(open);
    let mut first = keys.is_empty();
    let mut field = |data: &mut Vec<u8>, name: &str| -> Option<()> {
        if !std::mem::take(&mut first) {
            data.push(b',');
        }
        write_json_str(data, name);
        data.push(b':');
        Some(())
    };
    for item in extra {
        let SelectItem::Expr { expr, name } = item else {
            return None;
        };
        if let Some(value) = eval::eval(expr, &Value::Null, ctx).ok()? {
            field(&mut data, name)?;
            serde_json::to_writer(&mut data, &value).ok()?;
        }
    }
    if !first {
        data.push(b',');
    }
    data.extend_from_slice(lineage);
    data.extend_from_slice(arrival_text);
    data.push(b'}');
    Some(data)
}

/// `s` as a JSON string, as `serde_json` writes it: copied between quotes when nothing in it needs an escape
/// (topics and client ids, nearly always), else through `serde_json`.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, s).expect("writing to a Vec does not fail");
    }
}

/// The top-level keys of a JSON object (borrowed; an escaped key fails), every value checked and dropped.
/// The first [`TopKeys::INLINE`] keys are kept inline (no allocation for the usual small object).
struct TopKeys<'a> {
    inline: [&'a str; TopKeys::INLINE],
    len: usize,
    spilled: Vec<&'a str>,
}

impl<'a> TopKeys<'a> {
    const INLINE: usize = 16;

    fn push(&mut self, key: &'a str) {
        if self.len < Self::INLINE {
            self.inline[self.len] = key;
            self.len += 1;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(key);
        }
    }

    fn keys(&self) -> &[&'a str] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

impl<'de> Deserialize<'de> for TopKeys<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = TopKeys<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut keys = TopKeys {
                    inline: [""; TopKeys::INLINE],
                    len: 0,
                    spilled: Vec::new(),
                };
                while let Some(key) = map.next_key::<&'de str>()? {
                    keys.push(key);
                    map.next_value::<Checked>()?;
                }
                Ok(keys)
            }
        }
        d.deserialize_map(Keys)
    }
}

/// Any JSON value, parsed as fully as a `Value` would be (numbers converted, strings decoded) and dropped.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E>(self) -> std::result::Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Checked, A::Error> {
                while map.next_key::<Checked>()?.is_some() {
                    map.next_value::<Checked>()?;
                }
                Ok(Checked)
            }
        }
        d.deserialize_any(V)
    }
}

/// The outputs of one publish.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// Rules whose topic filter matched.
    pub matched: usize,
    /// Matched rules whose WHERE was false (no output, by design).
    pub filtered: usize,
    pub outputs: Vec<Output>,
}

/// An error record for the error stream (format in the module docs). `rule` is `None` for failures that
/// happen before any rule applies.
pub fn error_record(rule: Option<&str>, kind: FailureKind, message: &str, msg: &Message<'_>) -> PutRecord {
    let cut = msg.payload.len().min(ERROR_PAYLOAD_BYTES_MAX);
    let mut obj = Map::new();
    obj.insert("_topic".into(), Value::String(msg.topic.to_string()));
    obj.insert("_client_id".into(), Value::String(msg.client_id.to_string()));
    obj.insert("_arrival_time".into(), Value::from(msg.arrival_ms));
    obj.insert(
        "rule".into(),
        rule.map_or(Value::Null, |r| Value::String(r.to_string())),
    );
    obj.insert(
        "error".into(),
        serde_json::json!({"kind": kind, "message": message}),
    );
    match std::str::from_utf8(&msg.payload[..cut]) {
        Ok(text) => obj.insert("payload".into(), Value::String(text.to_string())),
        Err(_) => obj.insert(
            "payload_base64".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(&msg.payload[..cut])),
        ),
    };
    obj.insert("payload_bytes".into(), Value::from(msg.payload.len()));
    obj.insert("payload_truncated".into(), Value::Bool(cut < msg.payload.len()));
    let key = if msg.client_id.is_empty() {
        "unknown-client".to_string()
    } else {
        msg.client_id.chars().take(PARTITION_KEY_CHARS_MAX).collect()
    };
    // Encoding a map of strings and numbers cannot fail.
    let data = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
    PutRecord::new(key, data)
}

/// MQTT topic matching: `+` matches one level, `#` the rest (including none); a topic starting with `$`
/// is not matched by a filter starting with a wildcard.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    // Level by level over the bytes of both ('/' is ASCII, so byte positions are level boundaries); `+` and `#`
    // are wildcards only as whole levels, and `#` only as the last.
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        let whole = |at: usize| at + 1 == f.len() || f[at + 1] == b'/';
        if f.get(i) == Some(&b'#') && i + 1 == f.len() {
            return true;
        }
        if f.get(i) == Some(&b'+') && whole(i) {
            while j < t.len() && t[j] != b'/' {
                j += 1;
            }
            i += 1;
        } else {
            while i < f.len() && f[i] != b'/' {
                if t.get(j) != Some(&f[i]) {
                    return false;
                }
                i += 1;
                j += 1;
            }
            if j < t.len() && t[j] != b'/' {
                return false;
            }
        }
        match (i == f.len(), j == t.len()) {
            (true, true) => return true,
            (true, false) => return false,
            // Only a last `/#` matches its parent level ("a/#" matches "a").
            (false, true) => return &f[i..] == b"/#",
            (false, false) => {
                i += 1;
                j += 1;
            }
        }
    }
}
