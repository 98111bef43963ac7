//! `POST /v1/sql`: body `{"sql": "..."}`; the result format follows `Accept` (JSON by default, CSV, Arrow IPC
//! stream, Parquet); errors are `{"error":{"kind":..,"message":..}}` with the status of [`QueryError::http_status`].

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use crate::engine::QueryEngine;
use crate::error::{Fault, QueryError, Result};
use crate::format::{Format, encode};

/// Room for the JSON around the SQL text in a request body.
const BODY_OVERHEAD_BYTES: usize = 64 << 10;

/// The `/v1/sql` route over `engine`, ready to merge into the server's router.
pub fn router(engine: Arc<QueryEngine>) -> Router {
    let body_bytes_max = engine.limits().sql_bytes_max + BODY_OVERHEAD_BYTES;
    Router::new()
        .route("/v1/sql", post(sql))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(engine)
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
}

async fn sql(
    State(engine): State<Arc<QueryEngine>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match answer(&engine, &headers, body).await {
        Ok((format, bytes)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, format.content_type())],
            bytes,
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

async fn answer(
    engine: &QueryEngine,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Format, Vec<u8>)> {
    let accept = headers.get(header::ACCEPT).map(|v| v.to_str().unwrap_or("?"));
    let format = Format::from_accept(accept)?;
    let body = body.map_err(|e| QueryError::BadRequest(e.body_text()))?;
    let request: SqlRequest = serde_json::from_slice(&body)
        .map_err(|e| QueryError::BadRequest(format!("the body must be {{\"sql\": \"...\"}}: {e}")))?;
    let result = engine.sql(&request.sql).await?;
    // Encoding (Parquet especially) is CPU work: keep it off the async workers.
    tokio::task::spawn_blocking(move || encode(&result, format))
        .await
        .map_err(|e| QueryError::Internal(format!("encoding task: {e}")))?
        .map(|bytes| (format, bytes))
}

/// The JSON error body and status for `error`.
pub(crate) fn error_response(error: &QueryError) -> Response {
    if error.fault() == Fault::Internal {
        tracing::error!(error = %error, "query failed");
    }
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"error": {"kind": error.kind(), "message": error.to_string()}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
