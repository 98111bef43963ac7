//! The warehouse as a DataFusion schema: every Delta table under the warehouse root registered by its name.
//!
//! A warehouse is a local directory or any object_store URL (`s3://bucket/prefix`, `file:///...`). Each child
//! `<root>/<table>/` holding a `_delta_log/` is a table named after it: on a filesystem the subdirectories are read,
//! on an object store `<prefix>/` is listed with a delimiter and each child is checked for `<table>/_delta_log/`
//! entries. Object-store warehouses take the same storage options as deliveries (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, ...; deltalake also reads the standard AWS
//! environment variables).
//!
//! The listing is read once when a query starts (so `information_schema`, `SHOW TABLES` and name resolution agree
//! within a query), and a table is opened at its latest committed version each time a query plans against it, so a
//! query always sees the commits that landed before it started and never a half-written one (Delta commits are
//! atomic).
//!
//! Time travel: `<table>@v<version>` names the table as of a committed version, e.g.
//! `SELECT count(*) FROM telemetry@v3` (the default SQL dialect accepts `@` inside identifiers; quoting as
//! `"telemetry@v3"` works too). An unknown version is an `unknown_table` error.
//!
//! Only names from the listing resolve, so a table name can never become a path outside the warehouse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use deltalake::datafusion::catalog::{SchemaProvider, TableProvider};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::logical_expr::TableType;
use deltalake::{DeltaTableBuilder, ObjectStore};
use futures::StreamExt;

use crate::error::{QueryError, Result};

/// Tables listed in one warehouse at most; a guard against listing a directory that is not a warehouse.
pub const TABLES_MAX: usize = 10_000;

/// Object-store listings of `<table>/_delta_log/` in flight at once while listing a warehouse.
const LISTINGS_CONCURRENT_MAX: usize = 16;

/// A warehouse: a local directory or an object_store URL, with the storage options to reach it.
#[derive(Debug, Clone)]
pub struct Warehouse {
    /// The root as given (a local path, or the URL text for an object store).
    root: PathBuf,
    /// The root as a URL ending in `/`.
    url: url::Url,
    /// The local directory, when the warehouse is on the filesystem.
    local: Option<PathBuf>,
    storage_options: HashMap<String, String>,
}

impl Warehouse {
    /// The warehouse rooted at the local directory `root` (it need not exist yet: then it has no tables).
    pub fn local(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let absolute = std::path::absolute(&root).unwrap_or_else(|_| root.clone());
        let url = url::Url::from_directory_path(&absolute)
            .unwrap_or_else(|()| url::Url::parse("file:///").expect("a valid URL"));
        Self {
            local: Some(absolute),
            root,
            url,
            storage_options: HashMap::new(),
        }
    }

    /// The warehouse at `location`: a local path, a `file://` URL, or an object_store URL such as
    /// `s3://bucket/prefix`, reached with `storage_options` (the same keys as a delivery's).
    pub fn open(location: &str, storage_options: HashMap<String, String>) -> Result<Self> {
        if !location.contains("://") {
            return Ok(Self::local(location).with_storage_options(storage_options));
        }
        let mut url = url::Url::parse(location)
            .map_err(|e| QueryError::Warehouse(format!("warehouse URL {location:?}: {e}")))?;
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|()| {
                QueryError::Warehouse(format!("warehouse URL {location:?} is not a local path"))
            })?;
            return Ok(Self::local(path).with_storage_options(storage_options));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(QueryError::Warehouse(format!(
                "warehouse URL {location:?} names no bucket (write s3://bucket/prefix)"
            )));
        }
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        Ok(Self {
            root: PathBuf::from(location),
            url,
            local: None,
            storage_options,
        })
    }

    fn with_storage_options(mut self, storage_options: HashMap<String, String>) -> Self {
        self.storage_options = storage_options;
        self
    }

    /// The root as given: the local directory of a filesystem warehouse. For an object-store warehouse this is the
    /// URL text and not a directory: callers that write files must use [`Warehouse::local_root`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local directory of a filesystem warehouse (absolute); `None` for an object store.
    pub fn local_root(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// The root as a URL ending in `/`.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// `<root>/<name>/` as a URL.
    pub fn table_url(&self, name: &str) -> Result<url::Url> {
        self.url
            .join(&format!("{name}/"))
            .map_err(|e| QueryError::Warehouse(format!("table {name}: {e}")))
    }

    /// The names of its Delta tables, sorted. Children whose names could not be table names (not UTF-8, `@`, `/`,
    /// leading `.`) are skipped. Works for every warehouse; object stores are listed with a delimiter.
    pub async fn list_tables(&self) -> Result<Vec<String>> {
        let names = match &self.local {
            Some(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || list_local(&dir))
                    .await
                    .map_err(|e| QueryError::Internal(format!("listing task: {e}")))??
            }
            None => self.list_object_store().await?,
        };
        self.checked(names)
    }

    /// [`Warehouse::list_tables`] without `.await`, for a filesystem warehouse; an object-store warehouse is an
    /// error here (its listing is network IO: use `list_tables`).
    pub fn table_names(&self) -> Result<Vec<String>> {
        match &self.local {
            Some(dir) => self.checked(list_local(dir)?),
            None => Err(QueryError::Warehouse(format!(
                "{} is an object store: list its tables with list_tables().await",
                self.url
            ))),
        }
    }

    fn checked(&self, mut names: Vec<String>) -> Result<Vec<String>> {
        if names.len() > TABLES_MAX {
            return Err(QueryError::Warehouse(format!(
                "{} holds more than {TABLES_MAX} tables",
                self.url
            )));
        }
        names.sort();
        Ok(names)
    }

    /// The object store rooted at the warehouse (deltalake's store for the URL, with the storage options).
    fn object_store(&self) -> Result<Arc<dyn ObjectStore>> {
        let log_store = DeltaTableBuilder::from_url(self.url.clone())
            .map_err(|e| QueryError::Warehouse(format!("warehouse {}: {e}", self.url)))?
            .with_storage_options(self.storage_options.clone())
            .build_storage()
            .map_err(|e| QueryError::Warehouse(format!("warehouse {}: {e}", self.url)))?;
        Ok(log_store.object_store(None))
    }

    async fn list_object_store(&self) -> Result<Vec<String>> {
        let store = self.object_store()?;
        let listing =
            |e: deltalake::ObjectStoreError| QueryError::Warehouse(format!("listing {}: {e}", self.url));
        let children = store.list_with_delimiter(None).await.map_err(listing)?;
        let candidates: Vec<String> = children
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|name| usable_name(name))
            .take(TABLES_MAX + 1)
            .collect();
        let checks = futures::stream::iter(candidates)
            .map(|name| {
                let store = store.clone();
                async move {
                    let log = deltalake::Path::from(format!("{name}/_delta_log"));
                    let entries = store.list_with_delimiter(Some(&log)).await?;
                    let is_table = !entries.objects.is_empty() || !entries.common_prefixes.is_empty();
                    Ok::<_, deltalake::ObjectStoreError>(is_table.then_some(name))
                }
            })
            .buffer_unordered(LISTINGS_CONCURRENT_MAX)
            .collect::<Vec<_>>()
            .await;
        let mut names = Vec::new();
        for check in checks {
            if let Some(name) = check.map_err(listing)? {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// The table `name` at `version` (latest when `None`) as a DataFusion table provider. The caller resolves
    /// `name` against [`Warehouse::list_tables`] first.
    pub async fn table_provider(&self, name: &str, version: Option<u64>) -> Result<Arc<dyn TableProvider>> {
        let url = self.table_url(name)?;
        let mut builder = DeltaTableBuilder::from_url(url)
            .map_err(|e| QueryError::Warehouse(format!("table {name}: {e}")))?
            .with_storage_options(self.storage_options.clone());
        if let Some(version) = version {
            builder = builder.with_version(version as _);
        }
        let table = builder.load().await.map_err(|e| match version {
            Some(v) => QueryError::UnknownTable(format!("{name}@v{v}: no such version ({e})")),
            None => QueryError::Warehouse(format!("table {name}: {e}")),
        })?;
        table
            .table_provider()
            .await
            .map_err(|e| QueryError::Warehouse(format!("table {name}: {e}")))
    }
}

/// A child name that can be a table name.
fn usable_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('@') && !name.contains('/')
}

fn list_local(root: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(QueryError::Warehouse(format!("listing {}: {e}", root.display()))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| QueryError::Warehouse(format!("listing {}: {e}", root.display())))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if usable_name(&name) && entry.path().join("_delta_log").is_dir() {
            names.push(name);
            if names.len() > TABLES_MAX {
                break;
            }
        }
    }
    Ok(names)
}

/// Split `telemetry@v3` into (`telemetry`, Some(3)); a name without `@` is the latest version.
pub fn split_version(name: &str) -> Result<(&str, Option<u64>)> {
    let Some((table, suffix)) = name.rsplit_once('@') else {
        return Ok((name, None));
    };
    let version = suffix
        .strip_prefix('v')
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            QueryError::Invalid(format!(
                "{name:?}: time travel is written <table>@v<version>, e.g. telemetry@v3"
            ))
        })?;
    Ok((table, Some(version)))
}

/// The warehouse as the `public` schema of one query's session, with the table names listed when it started.
#[derive(Debug)]
pub(crate) struct WarehouseSchema {
    pub(crate) warehouse: Arc<Warehouse>,
    pub(crate) names: Vec<String>,
}

impl WarehouseSchema {
    pub(crate) async fn list(warehouse: Arc<Warehouse>) -> Result<Self> {
        let names = warehouse.list_tables().await?;
        Ok(Self { warehouse, names })
    }

    fn has_table(&self, name: &str) -> bool {
        self.names.binary_search_by(|t| t.as_str().cmp(name)).is_ok()
    }
}

fn external(e: QueryError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl SchemaProvider for WarehouseSchema {
    fn table_names(&self) -> Vec<String> {
        self.names.clone()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let (table, version) = split_version(name).map_err(external)?;
        if !self.has_table(table) {
            return Ok(None);
        }
        self.warehouse
            .table_provider(table, version)
            .await
            .map(Some)
            .map_err(external)
    }

    async fn table_type(&self, name: &str) -> Result<Option<TableType>, DataFusionError> {
        Ok(self.table_exist(name).then_some(TableType::Base))
    }

    fn table_exist(&self, name: &str) -> bool {
        match split_version(name) {
            Ok((table, _)) => self.has_table(table),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_written_with_at_v() {
        assert_eq!(split_version("telemetry").unwrap(), ("telemetry", None));
        assert_eq!(split_version("telemetry@v3").unwrap(), ("telemetry", Some(3)));
        assert!(split_version("telemetry@3").is_err());
        assert!(split_version("telemetry@vx").is_err());
    }

    #[tokio::test]
    async fn only_directories_with_a_delta_log_are_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/_delta_log")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/_delta_log")).unwrap();
        std::fs::create_dir_all(dir.path().join("not_a_table")).unwrap();
        std::fs::create_dir_all(dir.path().join(".hidden/_delta_log")).unwrap();
        let warehouse = Warehouse::local(dir.path());
        assert_eq!(warehouse.list_tables().await.unwrap(), ["a", "b"]);
        assert_eq!(warehouse.table_names().unwrap(), ["a", "b"]);
        assert!(
            Warehouse::local(dir.path().join("missing"))
                .list_tables()
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            Warehouse::open("s3://bucket/wh", HashMap::new())
                .unwrap()
                .table_names()
                .is_err()
        );
    }

    #[test]
    fn locations_are_paths_or_urls() {
        let w = Warehouse::open("s3://bucket/some/prefix", HashMap::new()).unwrap();
        assert_eq!(w.url().as_str(), "s3://bucket/some/prefix/");
        assert_eq!(w.table_url("t").unwrap().as_str(), "s3://bucket/some/prefix/t/");
        assert!(w.local_root().is_none());
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::open(dir.path().to_str().unwrap(), HashMap::new()).unwrap();
        assert_eq!(w.local_root(), Some(dir.path()));
        let from_url = url::Url::from_directory_path(dir.path()).unwrap();
        let w = Warehouse::open(from_url.as_str(), HashMap::new()).unwrap();
        assert_eq!(w.local_root(), Some(dir.path()));
        assert_eq!(w.url(), &from_url);
        assert!(Warehouse::open("s3:///prefix", HashMap::new()).is_err());
        assert!(Warehouse::open("s3://bu cket/", HashMap::new()).is_err());
    }
}
