//! `freshet lambda delivery|reports`: the AWS Lambda entry points (lambda_runtime), configured by environment
//! variables, and the `bootstrap` name under which the same binary serves a `provided.al2023` function.
//!
//! - `delivery`: a Kinesis event source mapping's `KinesisEvent` batches into the delivery's Delta table
//!   ([`freshet_process::batch::BatchDelivery`]), answering `{"batchItemFailures": [...]}`.
//! - `reports`: S3 notifications of new `_delta_log/<version>.json` objects run the reports their table triggers
//!   ([`freshet_reports::s3event`]).
//!
//! The runtime loop is lambda_runtime's: an event that does not deserialize, or that the handler finds malformed,
//! is answered on `/error` and the loop goes on with the next invocation. Configuration problems stop the process
//! with a one-line reason before the loop starts. See docs/deploy-lambda.md.

mod delivery;
mod reports;

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Args, ValueEnum};

/// The handler a bootstrap binary runs is read from this variable.
pub const HANDLER_VAR: &str = "FRESHET_LAMBDA_HANDLER";

#[derive(Debug, Args)]
pub struct LambdaArgs {
    /// Which function this process serves.
    pub handler: Handler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Handler {
    /// KinesisEvent batches → the delivery's Delta table.
    Delivery,
    /// S3Event for new `_delta_log` entries → report runs.
    Reports,
}

/// When the program runs under the file name `bootstrap` (a `provided.al2023` function), the command line is
/// `freshet lambda <$FRESHET_LAMBDA_HANDLER>`; otherwise `args` unchanged.
pub fn bootstrap_args(args: Vec<OsString>) -> Vec<OsString> {
    let invoked_as_bootstrap = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|name| name == "bootstrap");
    if !invoked_as_bootstrap {
        return args;
    }
    let handler = std::env::var_os(HANDLER_VAR).unwrap_or_default();
    vec!["freshet".into(), "lambda".into(), handler]
}

pub async fn run(args: LambdaArgs) -> anyhow::Result<()> {
    // lambda_runtime panics without these; say which one is missing instead.
    for var in [
        "AWS_LAMBDA_RUNTIME_API",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
    ] {
        anyhow::ensure!(
            std::env::var_os(var).is_some_and(|v| !v.is_empty()),
            "{var} is not set: `freshet lambda` runs inside AWS Lambda (or against a Lambda Runtime API emulator)"
        );
    }
    match args.handler {
        Handler::Delivery => delivery::run().await,
        Handler::Reports => reports::run().await,
    }
}

/// A required environment variable.
fn required(var: &str) -> anyhow::Result<String> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{var} must be set"))
}

/// An optional environment variable (unset and empty are the same).
fn optional(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// object_store options for an `s3://` warehouse from the standard AWS variables (Lambda sets the credentials and
/// region of the function's role); `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` point it at an S3-compatible server.
fn storage_options() -> HashMap<String, String> {
    [
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ALLOW_HTTP",
        "AWS_S3_ALLOW_UNSAFE_RENAME",
    ]
    .into_iter()
    .filter_map(|k| optional(k).map(|v| (k.to_string(), v)))
    .collect()
}

/// The instant to finish by: the invocation's deadline less `FRESHET_LAMBDA_DEADLINE_MARGIN_MS` (default 1000).
fn finish_by(deadline: SystemTime, margin: Duration) -> Instant {
    let left = deadline.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now() + left.saturating_sub(margin)
}

fn deadline_margin() -> anyhow::Result<Duration> {
    match optional("FRESHET_LAMBDA_DEADLINE_MARGIN_MS") {
        None => Ok(Duration::from_millis(1000)),
        Some(v) => v.parse().map(Duration::from_millis).with_context(|| {
            format!("FRESHET_LAMBDA_DEADLINE_MARGIN_MS={v:?} is not a number of milliseconds")
        }),
    }
}

/// lambda_runtime's loop ended: that only happens when the Runtime API itself fails.
fn runtime_ended(e: lambda_runtime::Error) -> anyhow::Error {
    anyhow::anyhow!("the Lambda runtime loop stopped: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_name_selects_the_lambda_command() {
        let same = vec![OsString::from("/usr/bin/freshet"), OsString::from("up")];
        assert_eq!(bootstrap_args(same.clone()), same);
        let args = bootstrap_args(vec![OsString::from("/var/runtime/bootstrap")]);
        assert_eq!(&args[..2], &[OsString::from("freshet"), OsString::from("lambda")]);
    }
}
