//! `freshet query "<sql>"`: one read-only SQL statement against a running server (`--url`, through `POST /v1/sql`)
//! or straight against a warehouse (`--warehouse`: a directory or an object_store URL such as `s3://bucket/prefix`
//! with `--storage-option key=value`; default `<data-dir>/warehouse`), printed as a table (Arrow's pretty printer),
//! CSV or the `/v1/sql` JSON.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use freshet_query::{Client, Format, QueryEngine, QueryLimits, Warehouse};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One read-only SQL statement; `<table>@v<N>` reads a table as of version N.
    pub sql: String,
    /// How to print the result.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Base URL of a running `freshet up` (e.g. http://127.0.0.1:8080); without it the warehouse is read directly.
    #[arg(long, conflicts_with = "warehouse")]
    pub url: Option<String>,
    /// Warehouse to read directly: a directory or an object_store URL such as `s3://bucket/prefix`
    /// (default: `<data-dir>/warehouse`).
    #[arg(long)]
    pub warehouse: Option<String>,
    /// object_store option for an object-store warehouse, `key=value` (repeatable), e.g.
    /// `AWS_ENDPOINT_URL=http://127.0.0.1:9000`; the standard AWS environment variables are read too.
    #[arg(long = "storage-option", requires = "warehouse")]
    pub storage_options: Vec<String>,
    /// Data directory whose warehouse is read when neither --url nor --warehouse is given.
    #[arg(long, env = "FRESHET_DATA_DIR", default_value = "./freshet-data")]
    pub data_dir: PathBuf,
    /// Memory limit of the query when reading the warehouse directly, in bytes.
    #[arg(long, default_value_t = QueryLimits::default().memory_bytes_max)]
    pub memory_bytes_max: usize,
    /// Time limit of the query (the server applies its own when --url is given).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub time_limit: Duration,
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let result = match &args.url {
        Some(url) => {
            Client::new(url, args.time_limit + Duration::from_secs(30))?
                .sql(&args.sql)
                .await?
        }
        None => {
            let warehouse = match &args.warehouse {
                Some(location) => Warehouse::open(location, parse_options(&args.storage_options)?)?,
                None => Warehouse::local(args.data_dir.join("warehouse")),
            };
            let limits = QueryLimits {
                memory_bytes_max: args.memory_bytes_max,
                time_max: args.time_limit,
                ..QueryLimits::default()
            };
            QueryEngine::new(warehouse, limits).sql(&args.sql).await?
        }
    };
    let text = match args.format {
        OutputFormat::Table => freshet_query::pretty(&result)? + "\n",
        OutputFormat::Csv => String::from_utf8(freshet_query::encode(&result, Format::Csv)?)?,
        OutputFormat::Json => String::from_utf8(freshet_query::encode(&result, Format::Json)?)? + "\n",
    };
    print!("{text}");
    Ok(())
}

fn parse_options(options: &[String]) -> anyhow::Result<HashMap<String, String>> {
    options
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => anyhow::bail!("storage option {kv:?} is not key=value"),
        })
        .collect()
}
