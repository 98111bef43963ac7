//! Errors of the Kinesis-compatible API, in AWS's shape: a JSON body `{"__type": "<Name>", "message": "..."}`
//! with AWS's status code, and the mapping between [`StoreError`] and those names in both directions (the server
//! maps store errors to names; the remote client maps names back to store errors).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{Fault, StoreError};
use crate::types::{ShardId, StreamName};

/// The AWS error names this API answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    ResourceNotFound,
    ResourceInUse,
    InvalidArgument,
    ExpiredIterator,
    ExpiredNextToken,
    LimitExceeded,
    ProvisionedThroughputExceeded,
    Serialization,
    Validation,
    UnknownOperation,
    UnrecognizedClient,
    InvalidSignature,
    IncompleteSignature,
    InternalFailure,
    ServiceUnavailable,
}

impl ErrorCode {
    const ALL: [ErrorCode; 15] = [
        ErrorCode::ResourceNotFound,
        ErrorCode::ResourceInUse,
        ErrorCode::InvalidArgument,
        ErrorCode::ExpiredIterator,
        ErrorCode::ExpiredNextToken,
        ErrorCode::LimitExceeded,
        ErrorCode::ProvisionedThroughputExceeded,
        ErrorCode::Serialization,
        ErrorCode::Validation,
        ErrorCode::UnknownOperation,
        ErrorCode::UnrecognizedClient,
        ErrorCode::InvalidSignature,
        ErrorCode::IncompleteSignature,
        ErrorCode::InternalFailure,
        ErrorCode::ServiceUnavailable,
    ];

    /// The `__type` AWS uses.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::ResourceNotFound => "ResourceNotFoundException",
            ErrorCode::ResourceInUse => "ResourceInUseException",
            ErrorCode::InvalidArgument => "InvalidArgumentException",
            ErrorCode::ExpiredIterator => "ExpiredIteratorException",
            ErrorCode::ExpiredNextToken => "ExpiredNextTokenException",
            ErrorCode::LimitExceeded => "LimitExceededException",
            ErrorCode::ProvisionedThroughputExceeded => "ProvisionedThroughputExceededException",
            ErrorCode::Serialization => "SerializationException",
            ErrorCode::Validation => "ValidationException",
            ErrorCode::UnknownOperation => "UnknownOperationException",
            ErrorCode::UnrecognizedClient => "UnrecognizedClientException",
            ErrorCode::InvalidSignature => "InvalidSignatureException",
            ErrorCode::IncompleteSignature => "IncompleteSignatureException",
            ErrorCode::InternalFailure => "InternalFailure",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    /// Parse a `__type`, tolerating the `namespace#Name` form some AWS endpoints send.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.rsplit('#').next().unwrap_or(name);
        let name = name.split(':').next().unwrap_or(name);
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InternalFailure => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answer of the API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Serialization, message)
    }

    /// AWS's wording for a request member that breaks its model's constraint.
    pub fn validation(member: &str, value: &str, constraint: &str) -> Self {
        let value: String = value.chars().take(64).collect();
        Self::new(
            ErrorCode::Validation,
            format!(
                "1 validation error detected: Value '{value}' at '{}' failed to satisfy constraint: Member {constraint}",
                camel(member)
            ),
        )
    }

    /// A required member is absent.
    pub fn missing(member: &str) -> Self {
        Self::new(
            ErrorCode::Validation,
            format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
                camel(member)
            ),
        )
    }

    /// Map a store error, with AWS's wording for absent and existing resources.
    pub fn from_store(e: &StoreError, account: &str) -> Self {
        use StoreError::*;
        match e {
            StreamNotFound(s) => Self::new(
                ErrorCode::ResourceNotFound,
                format!("Stream {s} under account {account} not found."),
            ),
            StreamExists(s) => Self::new(
                ErrorCode::ResourceInUse,
                format!("Stream {s} under account {account} already exists."),
            ),
            ShardNotFound { stream, shard } => Self::new(
                ErrorCode::ResourceNotFound,
                format!("Shard {shard} in stream {stream} under account {account} does not exist"),
            ),
            ConsumerNotFound { stream, consumer } => Self::new(
                ErrorCode::ResourceNotFound,
                format!("Consumer {consumer} under stream {stream} not found."),
            ),
            ConsumerExists { stream, consumer } => Self::new(
                ErrorCode::ResourceInUse,
                format!("Consumer {consumer} under stream {stream} already exists for account {account}."),
            ),
            InvalidArgument(m) => Self::new(ErrorCode::InvalidArgument, m.clone()),
            LimitExceeded(m) => Self::new(ErrorCode::LimitExceeded, m.clone()),
            ResourceInUse(m) => Self::new(ErrorCode::ResourceInUse, m.clone()),
            ExpiredIterator(m) => Self::new(ErrorCode::ExpiredIterator, m.clone()),
            other => match other.fault() {
                Fault::Resource => Self::new(ErrorCode::ServiceUnavailable, other.to_string()),
                _ => Self::new(ErrorCode::InternalFailure, other.to_string()),
            },
        }
    }

    /// The JSON body AWS sends.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"__type": self.code.name(), "message": self.message}))
            .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code.status(), self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("{}:", self.code.name())) {
            headers.insert("x-amzn-ErrorType", v);
        }
        response
    }
}

/// What a remote call was about, so an AWS error name can become the precise [`StoreError`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorContext<'a> {
    pub stream: Option<&'a StreamName>,
    pub shard: Option<ShardId>,
    pub consumer: Option<&'a str>,
    /// The call creates the named resource, so "in use" means "already exists".
    pub creates: bool,
}

/// Map an AWS error answer back to a store error (the remote client's side of [`ApiError::from_store`]).
pub fn to_store_error(type_name: &str, message: &str, ctx: ErrorContext<'_>) -> StoreError {
    let stream = || ctx.stream.map(|s| s.to_string()).unwrap_or_default();
    let consumer = || ctx.consumer.unwrap_or_default().to_string();
    let Some(code) = ErrorCode::from_name(type_name) else {
        return StoreError::Internal(format!("{type_name}: {message}"));
    };
    match code {
        ErrorCode::ResourceNotFound => {
            if message.starts_with("Shard ") {
                StoreError::ShardNotFound {
                    stream: stream(),
                    shard: message
                        .split_whitespace()
                        .nth(1)
                        .map(str::to_string)
                        .or_else(|| ctx.shard.map(|s| s.to_string()))
                        .unwrap_or_default(),
                }
            } else if message.starts_with("Consumer ") && ctx.consumer.is_some() {
                StoreError::ConsumerNotFound {
                    stream: stream(),
                    consumer: consumer(),
                }
            } else if ctx.stream.is_some() {
                StoreError::StreamNotFound(stream())
            } else {
                StoreError::InvalidArgument(message.to_string())
            }
        }
        ErrorCode::ResourceInUse if ctx.creates && ctx.consumer.is_some() => StoreError::ConsumerExists {
            stream: stream(),
            consumer: consumer(),
        },
        ErrorCode::ResourceInUse if ctx.creates => StoreError::StreamExists(stream()),
        ErrorCode::ResourceInUse => StoreError::ResourceInUse(message.to_string()),
        ErrorCode::InvalidArgument
        | ErrorCode::Validation
        | ErrorCode::Serialization
        | ErrorCode::UnknownOperation
        | ErrorCode::ExpiredNextToken => StoreError::InvalidArgument(message.to_string()),
        ErrorCode::UnrecognizedClient | ErrorCode::InvalidSignature | ErrorCode::IncompleteSignature => {
            StoreError::InvalidArgument(format!("{}: {message}", code.name()))
        }
        ErrorCode::ExpiredIterator => StoreError::ExpiredIterator(message.to_string()),
        // The store has no throttling variant: both mean "retry later", which `LimitExceeded` says.
        ErrorCode::LimitExceeded | ErrorCode::ProvisionedThroughputExceeded => {
            StoreError::LimitExceeded(format!("{}: {message}", code.name()))
        }
        ErrorCode::ServiceUnavailable => StoreError::io(
            "the Kinesis endpoint is unavailable",
            std::io::Error::other(message.to_string()),
        ),
        ErrorCode::InternalFailure => StoreError::Internal(format!("remote: {message}")),
    }
}

/// `StreamName` → `streamName`, as AWS names members in validation messages.
fn camel(member: &str) -> String {
    let mut chars = member.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_error_maps_to_an_aws_name_and_status() {
        let account = "000000000000";
        let cases = [
            (
                StoreError::StreamNotFound("s".into()),
                "ResourceNotFoundException",
                400,
            ),
            (
                StoreError::StreamExists("s".into()),
                "ResourceInUseException",
                400,
            ),
            (
                StoreError::ShardNotFound {
                    stream: "s".into(),
                    shard: "shardId-000000000009".into(),
                },
                "ResourceNotFoundException",
                400,
            ),
            (
                StoreError::ConsumerNotFound {
                    stream: "s".into(),
                    consumer: "c".into(),
                },
                "ResourceNotFoundException",
                400,
            ),
            (
                StoreError::ConsumerExists {
                    stream: "s".into(),
                    consumer: "c".into(),
                },
                "ResourceInUseException",
                400,
            ),
            (
                StoreError::InvalidArgument("x".into()),
                "InvalidArgumentException",
                400,
            ),
            (
                StoreError::LimitExceeded("x".into()),
                "LimitExceededException",
                400,
            ),
            (
                StoreError::ResourceInUse("x".into()),
                "ResourceInUseException",
                400,
            ),
            (
                StoreError::ExpiredIterator("x".into()),
                "ExpiredIteratorException",
                400,
            ),
            (StoreError::ShuttingDown, "ServiceUnavailable", 503),
            (
                StoreError::DiskFull { path: "/x".into() },
                "ServiceUnavailable",
                503,
            ),
            (StoreError::Internal("x".into()), "InternalFailure", 500),
            (
                StoreError::io("reading", std::io::Error::other("boom")),
                "InternalFailure",
                500,
            ),
        ];
        for (store_error, name, status) in cases {
            let api = ApiError::from_store(&store_error, account);
            assert_eq!(api.code.name(), name, "{store_error:?}");
            assert_eq!(api.code.status().as_u16(), status, "{store_error:?}");
            let body: serde_json::Value = serde_json::from_slice(&api.body()).unwrap();
            assert_eq!(body["__type"], name);
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn aws_names_map_back_to_the_same_store_errors() {
        let stream = StreamName::new("s").unwrap();
        let ctx = ErrorContext {
            stream: Some(&stream),
            shard: Some(ShardId(9)),
            consumer: Some("c"),
            creates: false,
        };
        let round_trip = |e: StoreError, ctx: ErrorContext<'_>| {
            let api = ApiError::from_store(&e, "1");
            to_store_error(api.code.name(), &api.message, ctx)
        };
        assert!(matches!(
            round_trip(StoreError::StreamNotFound("s".into()), ctx),
            StoreError::StreamNotFound(s) if s == "s"
        ));
        assert!(matches!(
            round_trip(
                StoreError::ShardNotFound {
                    stream: "s".into(),
                    shard: ShardId(9).to_string()
                },
                ctx
            ),
            StoreError::ShardNotFound { shard, .. } if shard == "shardId-000000000009"
        ));
        assert!(matches!(
            round_trip(
                StoreError::ConsumerNotFound {
                    stream: "s".into(),
                    consumer: "c".into()
                },
                ctx
            ),
            StoreError::ConsumerNotFound { .. }
        ));
        let creating = ErrorContext {
            creates: true,
            consumer: None,
            ..ctx
        };
        assert!(matches!(
            round_trip(StoreError::StreamExists("s".into()), creating),
            StoreError::StreamExists(_)
        ));
        let registering = ErrorContext { creates: true, ..ctx };
        assert!(matches!(
            round_trip(
                StoreError::ConsumerExists {
                    stream: "s".into(),
                    consumer: "c".into()
                },
                registering
            ),
            StoreError::ConsumerExists { .. }
        ));
        assert!(matches!(
            to_store_error("com.amazonaws.kinesis#ValidationException", "bad", ctx),
            StoreError::InvalidArgument(_)
        ));
        assert!(matches!(
            to_store_error("ProvisionedThroughputExceededException", "slow down", ctx),
            StoreError::LimitExceeded(_)
        ));
        assert!(to_store_error("ServiceUnavailable", "later", ctx).is_retryable());
        assert!(matches!(
            to_store_error("ExpiredIteratorException", "old", ctx),
            StoreError::ExpiredIterator(_)
        ));
        assert!(matches!(
            to_store_error("SomethingNew", "?", ctx),
            StoreError::Internal(_)
        ));
    }

    #[test]
    fn validation_messages_use_aws_member_names() {
        let e = ApiError::missing("StreamName");
        assert_eq!(e.code, ErrorCode::Validation);
        assert!(e.message.contains("'streamName'"), "{}", e.message);
    }
}
