//! Optional external transform over HTTP, speaking Firehose's data-transformation (Lambda) contract.
//!
//! # Contract
//!
//! - Each flush sends the buffered records to the configured endpoint in invocations of at most `records_max`
//!   records and `bytes_max` raw bytes, as `POST <url>` with the JSON body Firehose gives a transformation Lambda
//!   for a Kinesis source: `invocationId`, `deliveryStreamArn`, `sourceKinesisStreamArn`, `region`,
//!   `records: [{recordId, approximateArrivalTimestamp, data (base64), kinesisRecordMetadata}]`.
//!   A `recordId` is `<shardId>:<sequenceNumber>`, unique within an invocation.
//! - The answer MUST be `{"records": [{recordId, result: Ok | Dropped | ProcessingFailed, data (base64)}]}`.
//!   `Ok`: the decoded data replaces the record's payload and goes on to the SQL transform (if any) and conversion.
//!   `Dropped`: the record is counted and not written (not an error). `ProcessingFailed`, a recordId missing from
//!   the answer, an unknown result, or data that is not base64: the record is a row of the error table (with its
//!   original bytes and the reason) and the delivery keeps going.
//! - An invocation that fails (transport error, timeout, non-2xx status) is retried with backoff until
//!   `retry_duration_seconds` (Firehose's `RetryOptions.DurationInSeconds`, default 300 s) have passed since its
//!   first attempt; then its records go to the error table as `transform_unavailable`. A 2xx answer that is not
//!   the contract's JSON is not retried: its records go to the error table as `transform_invalid_response`.
//! - Every buffered record thus ends as exactly one of: transformed record, dropped, error row.
//! - The endpoint is called again for records replayed after a crash (at-least-once invocation, as in Firehose);
//!   what lands in the table is still exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{DeliveryConfig, HttpTransformConfig};
use crate::convert::{ErrorKind, ErrorRow, SourceRecord};
use crate::error::{ProcessError, Result};

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Largest answer read from the endpoint.
const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// What one flush's records became.
#[derive(Debug, Default)]
pub struct HttpOutcome {
    /// Records the function returned `Ok` for, with the transformed data, in input order.
    pub records: Vec<SourceRecord>,
    /// Records the function returned `Dropped` for.
    pub dropped: u64,
    /// Records that failed, one error row each.
    pub errors: Vec<ErrorRow>,
    /// Invocation attempts that failed and were retried (or given up on).
    pub failed_attempts: u64,
}

/// The request body (Firehose's `KinesisFirehoseEvent` for a Kinesis source).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    invocation_id: String,
    delivery_stream_arn: &'a str,
    source_kinesis_stream_arn: &'a str,
    region: &'a str,
    records: Vec<RequestRecord>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestRecord {
    record_id: String,
    approximate_arrival_timestamp: i64,
    data: String,
    kinesis_record_metadata: KinesisMetadata,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KinesisMetadata {
    shard_id: String,
    partition_key: String,
    approximate_arrival_timestamp: i64,
    sequence_number: String,
    subsequence_number: u64,
}

#[derive(Deserialize)]
struct Response {
    records: Vec<ResponseRecord>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponseRecord {
    record_id: String,
    result: String,
    #[serde(default)]
    data: Option<String>,
}

/// A configured HTTP transform with its client.
#[derive(Debug, Clone)]
pub struct HttpTransform {
    config: HttpTransformConfig,
    client: reqwest::Client,
    delivery_arn: String,
    stream_arn: String,
}

impl HttpTransform {
    /// The delivery's HTTP transform, if it has one.
    pub fn new(config: &DeliveryConfig) -> Result<Option<Self>> {
        let Some(t) = &config.transform_http else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(t.timeout_ms))
            .connect_timeout(Duration::from_millis(t.timeout_ms.min(10_000)))
            .build()
            .map_err(|e| ProcessError::Config(format!("transform_http client: {e}")))?;
        Ok(Some(Self {
            client,
            delivery_arn: format!(
                "arn:aws:firehose:{}:000000000000:deliverystream/{}",
                t.region, config.name
            ),
            stream_arn: format!(
                "arn:aws:kinesis:{}:000000000000:stream/{}",
                t.region, config.stream
            ),
            config: t.clone(),
        }))
    }

    /// Send `records` through the function. Fails only if `shutdown` is cancelled while an invocation is being
    /// retried (nothing is committed then, so the records are read again after a restart).
    pub async fn apply(&self, records: &[SourceRecord], shutdown: &CancellationToken) -> Result<HttpOutcome> {
        self.apply_with(records, shutdown, &|s: &SourceRecord| {
            s.record.sequence_number.to_string()
        })
        .await
    }

    /// [`HttpTransform::apply`] for records whose `sequence_number` stands for another one: `sequence_text` gives
    /// the number the function sees (in `recordId` and `kinesisRecordMetadata.sequenceNumber`). Batch delivery
    /// uses it to show AWS's sequence numbers while its records carry ordinals.
    pub async fn apply_with(
        &self,
        records: &[SourceRecord],
        shutdown: &CancellationToken,
        sequence_text: SequenceText<'_>,
    ) -> Result<HttpOutcome> {
        let chunks = self.chunks(records);
        let mut results: Vec<Result<HttpOutcome>> = Vec::with_capacity(chunks.len());
        // At most `concurrency` invocations in flight; results stay in input order.
        for group in chunks.chunks(self.config.concurrency) {
            let calls: Vec<_> = group
                .iter()
                .map(|c| self.invoke(c, shutdown, sequence_text))
                .collect();
            results.extend(futures::future::join_all(calls).await);
        }
        let mut out = HttpOutcome::default();
        for r in results {
            let r = r?;
            out.records.extend(r.records);
            out.dropped += r.dropped;
            out.errors.extend(r.errors);
            out.failed_attempts += r.failed_attempts;
        }
        Ok(out)
    }

    /// Split into invocations of at most `records_max` records and `bytes_max` raw bytes (at least one record).
    fn chunks<'a>(&self, records: &'a [SourceRecord]) -> Vec<&'a [SourceRecord]> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0u64);
        for (i, r) in records.iter().enumerate() {
            let len = r.record.data.len() as u64;
            if i > start && (i - start >= self.config.records_max || bytes + len > self.config.bytes_max) {
                out.push(&records[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += len;
        }
        if start < records.len() {
            out.push(&records[start..]);
        }
        out
    }

    async fn invoke(
        &self,
        chunk: &[SourceRecord],
        shutdown: &CancellationToken,
        sequence_text: SequenceText<'_>,
    ) -> Result<HttpOutcome> {
        let body = Request {
            invocation_id: invocation_id(chunk, sequence_text),
            delivery_stream_arn: &self.delivery_arn,
            source_kinesis_stream_arn: &self.stream_arn,
            region: &self.config.region,
            records: chunk
                .iter()
                .map(|s| RequestRecord {
                    record_id: record_id(s, sequence_text),
                    approximate_arrival_timestamp: s.record.arrival_ms,
                    data: BASE64.encode(&s.record.data),
                    kinesis_record_metadata: KinesisMetadata {
                        shard_id: s.shard_id.to_string(),
                        partition_key: s.record.partition_key.clone(),
                        approximate_arrival_timestamp: s.record.arrival_ms,
                        sequence_number: sequence_text(s),
                        subsequence_number: 0,
                    },
                })
                .collect(),
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| ProcessError::Internal(format!("transform request body: {e}")))?;
        let first = Instant::now();
        let retry_for = Duration::from_secs(self.config.retry_duration_seconds);
        let mut backoff = BACKOFF_FIRST;
        let mut failed_attempts = 0;
        loop {
            let last_error = match self.post(body.clone()).await {
                Ok(answer) => {
                    let mut out = match serde_json::from_slice::<Response>(&answer) {
                        Ok(resp) => settle(chunk, resp, sequence_text)?,
                        Err(e) => all_failed(
                            chunk,
                            ErrorKind::TransformInvalidResponse,
                            &format!("the transform endpoint's answer is not {{\"records\": [...]}}: {e}"),
                        )?,
                    };
                    out.failed_attempts = failed_attempts;
                    return Ok(out);
                }
                Err(e) => e,
            };
            failed_attempts += 1;
            metrics::counter!("freshet_delivery_transform_failed_invocations_total").increment(1);
            let elapsed = first.elapsed();
            if elapsed >= retry_for {
                tracing::warn!(url = %self.config.url, error = %last_error, attempts = failed_attempts,
                    "the transform endpoint kept failing past the retry duration; its records go to the error table");
                let mut out = all_failed(
                    chunk,
                    ErrorKind::TransformUnavailable,
                    &format!(
                        "the transform endpoint failed for {} s ({failed_attempts} attempts); last error: {last_error}",
                        elapsed.as_secs()
                    ),
                )?;
                out.failed_attempts = failed_attempts;
                return Ok(out);
            }
            tracing::warn!(url = %self.config.url, error = %last_error, "transform invocation failed; retrying");
            let wait = backoff.min(retry_for - elapsed);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => {
                    return Err(ProcessError::Stopped(format!(
                        "stopped while retrying the transform endpoint ({last_error})"
                    )));
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One invocation: the answer's body on a 2xx status, else why it failed.
    async fn post(&self, body: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
        let mut req = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.config.bearer_token {
            req = req.bearer_auth(token);
        }
        for (k, v) in &self.config.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            return Err(format!("HTTP {status}: {text}"));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > RESPONSE_BYTES_MAX as u64)
        {
            return Err(format!("answer larger than {RESPONSE_BYTES_MAX} bytes"));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if bytes.len() > RESPONSE_BYTES_MAX {
            return Err(format!("answer larger than {RESPONSE_BYTES_MAX} bytes"));
        }
        Ok(bytes.to_vec())
    }
}

/// The sequence number the function sees for a record, as decimal text.
pub type SequenceText<'a> = &'a (dyn Fn(&SourceRecord) -> String + Sync);

fn record_id(s: &SourceRecord, sequence_text: SequenceText<'_>) -> String {
    format!("{}:{}", s.shard_id, sequence_text(s))
}

/// Stable for the same records, so a replayed invocation has the same id.
fn invocation_id(chunk: &[SourceRecord], sequence_text: SequenceText<'_>) -> String {
    match (chunk.first(), chunk.last()) {
        (Some(a), Some(b)) => format!("{}-{}", record_id(a, sequence_text), record_id(b, sequence_text)),
        _ => "empty".to_string(),
    }
}

fn error_row(s: &SourceRecord, kind: ErrorKind, message: String) -> Result<ErrorRow> {
    ErrorRow::new(s.shard_id, &s.record, kind, message)
}

fn all_failed(chunk: &[SourceRecord], kind: ErrorKind, message: &str) -> Result<HttpOutcome> {
    Ok(HttpOutcome {
        errors: chunk
            .iter()
            .map(|s| error_row(s, kind, message.to_string()))
            .collect::<Result<_>>()?,
        ..HttpOutcome::default()
    })
}

/// Match the answer to the records sent, by recordId.
fn settle(chunk: &[SourceRecord], resp: Response, sequence_text: SequenceText<'_>) -> Result<HttpOutcome> {
    let mut by_id: HashMap<String, ResponseRecord> = HashMap::with_capacity(resp.records.len());
    for r in resp.records {
        by_id.insert(r.record_id.clone(), r);
    }
    let mut out = HttpOutcome::default();
    for s in chunk {
        let id = record_id(s, sequence_text);
        let Some(r) = by_id.remove(&id) else {
            out.errors.push(error_row(
                s,
                ErrorKind::TransformInvalidResponse,
                format!("the transform's answer has no record with recordId {id}"),
            )?);
            continue;
        };
        match r.result.as_str() {
            "Ok" => match r.data.as_deref().map(|d| BASE64.decode(d)) {
                Some(Ok(data)) => {
                    let mut t = s.clone();
                    t.record.data = data.into();
                    out.records.push(t);
                }
                Some(Err(e)) => out.errors.push(error_row(
                    s,
                    ErrorKind::TransformInvalidResponse,
                    format!("the transform returned data for recordId {id} that is not base64: {e}"),
                )?),
                None => out.errors.push(error_row(
                    s,
                    ErrorKind::TransformInvalidResponse,
                    format!("the transform returned Ok without data for recordId {id}"),
                )?),
            },
            "Dropped" => out.dropped += 1,
            "ProcessingFailed" => out.errors.push(error_row(
                s,
                ErrorKind::TransformProcessingFailed,
                format!("the transform returned ProcessingFailed for recordId {id}"),
            )?),
            other => out.errors.push(error_row(
                s,
                ErrorKind::TransformInvalidResponse,
                format!(
                    "the transform returned result {other:?} for recordId {id} (expected Ok, Dropped or ProcessingFailed)"
                ),
            )?),
        }
    }
    if !by_id.is_empty() {
        tracing::warn!(
            unknown = by_id.len(),
            "the transform's answer has recordIds that were not sent; ignored"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_storage::{Record, SequenceNumber, ShardId};

    fn rec(seq: u64, data: &str) -> SourceRecord {
        SourceRecord {
            shard_id: ShardId(1),
            record: Record {
                sequence_number: SequenceNumber::from_u64(seq),
                partition_key: "k".into(),
                data: bytes::Bytes::copy_from_slice(data.as_bytes()),
                arrival_ms: 5,
            },
        }
    }

    #[test]
    fn answers_settle_every_record_once() {
        let chunk = vec![rec(1, "a"), rec(2, "b"), rec(3, "c"), rec(4, "d"), rec(5, "e")];
        let resp: Response = serde_json::from_value(serde_json::json!({"records": [
            {"recordId": "shardId-000000000001:1", "result": "Ok", "data": BASE64.encode("A")},
            {"recordId": "shardId-000000000001:2", "result": "Dropped"},
            {"recordId": "shardId-000000000001:3", "result": "ProcessingFailed", "data": "Yw=="},
            {"recordId": "shardId-000000000001:4", "result": "Ok", "data": "***"},
            {"recordId": "shardId-000000000001:99", "result": "Ok", "data": "eA=="},
        ]}))
        .unwrap();
        let out = settle(&chunk, resp, &|s: &SourceRecord| {
            s.record.sequence_number.to_string()
        })
        .unwrap();
        assert_eq!(out.records.len(), 1);
        assert_eq!(&out.records[0].record.data[..], b"A");
        assert_eq!(out.dropped, 1);
        let kinds: Vec<(u64, ErrorKind)> = out.errors.iter().map(|e| (e.sequence_number, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (3, ErrorKind::TransformProcessingFailed),
                (4, ErrorKind::TransformInvalidResponse),
                (5, ErrorKind::TransformInvalidResponse),
            ]
        );
        // Error rows keep the original bytes.
        assert_eq!(&out.errors[0].raw[..], b"c");
    }

    #[test]
    fn invocations_respect_count_and_bytes() {
        let mut config = DeliveryConfig::new("d", "s", "t", "/tmp/w");
        config.transform_http = Some(HttpTransformConfig::new("http://127.0.0.1:1/"));
        let t = config.transform_http.as_mut().unwrap();
        t.records_max = 3;
        t.bytes_max = 10;
        let h = HttpTransform::new(&config).unwrap().unwrap();
        let recs: Vec<SourceRecord> = (0..7).map(|i| rec(i, "xxxx")).collect();
        let sizes: Vec<usize> = h.chunks(&recs).iter().map(|c| c.len()).collect();
        // 4 bytes each: at most 2 fit in 10 bytes.
        assert_eq!(sizes, vec![2, 2, 2, 1]);
        let big = vec![rec(0, &"y".repeat(50)), rec(1, "z")];
        let sizes: Vec<usize> = h.chunks(&big).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1, 1]);
    }
}
