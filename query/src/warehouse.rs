//! The warehouse as a DataFusion schema: every Delta table under `<warehouse>/` registered by its directory name.
//!
//! A warehouse is a directory; each subdirectory holding a `_delta_log/` is a table named after it. The schema is
//! dynamic: the listing is read when a query asks for table names (`information_schema`, `SHOW TABLES`), and a table
//! is opened at its latest committed version each time a query plans against it, so a query always sees the commits
//! that landed before it started and never a half-written one (Delta commits are atomic).
//!
//! Time travel: `<table>@v<version>` names the table as of a committed version, e.g.
//! `SELECT count(*) FROM telemetry@v3` (the default SQL dialect accepts `@` inside identifiers; quoting as
//! `"telemetry@v3"` works too). An unknown version is an `unknown_table` error.
//!
//! Only names from the listing resolve, so a table name can never become a path outside the warehouse.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use deltalake::DeltaTableBuilder;
use deltalake::datafusion::catalog::{SchemaProvider, TableProvider};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::logical_expr::TableType;

use crate::error::{QueryError, Result};

/// Tables listed in one warehouse at most; a guard against listing a directory that is not a warehouse.
pub const TABLES_MAX: usize = 10_000;

/// A warehouse on the local filesystem.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: PathBuf,
}

impl Warehouse {
    /// The warehouse rooted at `root` (it need not exist yet: then it has no tables).
    pub fn local(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The names of its Delta tables, sorted. Directories whose names could not be table names (not UTF-8, `@`,
    /// leading `.`) are skipped.
    pub fn table_names(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(QueryError::Warehouse(format!(
                    "listing {}: {e}",
                    self.root.display()
                )));
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| QueryError::Warehouse(format!("listing {}: {e}", self.root.display())))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || name.contains('@') {
                continue;
            }
            if entry.path().join("_delta_log").is_dir() {
                names.push(name);
                if names.len() > TABLES_MAX {
                    return Err(QueryError::Warehouse(format!(
                        "{} holds more than {TABLES_MAX} tables",
                        self.root.display()
                    )));
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn has_table(&self, name: &str) -> Result<bool> {
        Ok(self.table_names()?.iter().any(|t| t == name))
    }

    /// The table `name` at `version` (latest when `None`) as a DataFusion table provider; `None` if there is no
    /// such table.
    pub async fn table_provider(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if !self.has_table(name)? {
            return Ok(None);
        }
        let dir = std::path::absolute(self.root.join(name))
            .map_err(|e| QueryError::Warehouse(format!("table {name}: {e}")))?;
        let url = url::Url::from_directory_path(&dir)
            .map_err(|()| QueryError::Warehouse(format!("{} is not a URL", dir.display())))?;
        let mut builder = DeltaTableBuilder::from_url(url)
            .map_err(|e| QueryError::Warehouse(format!("table {name}: {e}")))?;
        if let Some(version) = version {
            builder = builder.with_version(version as _);
        }
        let table = builder.load().await.map_err(|e| match version {
            Some(v) => QueryError::UnknownTable(format!("{name}@v{v}: no such version ({e})")),
            None => QueryError::Warehouse(format!("table {name}: {e}")),
        })?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| QueryError::Warehouse(format!("table {name}: {e}")))?;
        Ok(Some(provider))
    }
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

/// The warehouse as the `public` schema of a query's session.
#[derive(Debug)]
pub(crate) struct WarehouseSchema {
    pub(crate) warehouse: Arc<Warehouse>,
}

fn external(e: QueryError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl SchemaProvider for WarehouseSchema {
    fn table_names(&self) -> Vec<String> {
        match self.warehouse.table_names() {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the warehouse");
                Vec::new()
            }
        }
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let (table, version) = split_version(name).map_err(external)?;
        self.warehouse
            .table_provider(table, version)
            .await
            .map_err(external)
    }

    async fn table_type(&self, name: &str) -> Result<Option<TableType>, DataFusionError> {
        Ok(self.table_exist(name).then_some(TableType::Base))
    }

    fn table_exist(&self, name: &str) -> bool {
        match split_version(name) {
            Ok((table, _)) => self.warehouse.has_table(table).unwrap_or(false),
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

    #[test]
    fn only_directories_with_a_delta_log_are_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/_delta_log")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/_delta_log")).unwrap();
        std::fs::create_dir_all(dir.path().join("not_a_table")).unwrap();
        std::fs::create_dir_all(dir.path().join(".hidden/_delta_log")).unwrap();
        let warehouse = Warehouse::local(dir.path());
        assert_eq!(warehouse.table_names().unwrap(), ["a", "b"]);
        assert!(
            Warehouse::local(dir.path().join("missing"))
                .table_names()
                .unwrap()
                .is_empty()
        );
    }
}
