//! Golden SQL tests: every `tests/golden/query/<case>.sql` runs against a fixture warehouse (written by Python
//! `deltalake`: `telemetry` in two commits, partitioned by event date, and a `devices` reference table) and its
//! result (column types + Arrow's pretty table, or the error kind and HTTP status) must equal `<case>.out`.
//! `FRESHET_UPDATE_GOLDEN=1` rewrites the `.out` files from the current results.

use std::path::{Path, PathBuf};

use freshet_query::{QueryEngine, QueryLimits, Warehouse};
use freshet_tests::python_json;

/// A temporary warehouse holding the fixture tables (see `tests/py/query_fixture.py`).
pub fn fixture_warehouse() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let made = python_json("query_fixture.py", &[dir.path().to_str().unwrap()]);
    assert_eq!(made["telemetry_version"], 1, "two commits: versions 0 and 1");
    dir
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/query")
}

async fn render(engine: &QueryEngine, sql: &str) -> String {
    match engine.sql(sql).await {
        Ok(result) => {
            let columns: Vec<String> = result
                .schema
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect();
            format!(
                "columns: {}\n{}\n",
                columns.join(", "),
                freshet_query::pretty(&result).unwrap()
            )
        }
        Err(e) => format!("error: {} (HTTP {})\n", e.kind(), e.http_status()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_golden_results_match_their_files() {
    let warehouse = fixture_warehouse();
    let engine = QueryEngine::new(Warehouse::local(warehouse.path()), QueryLimits::default());
    let update = std::env::var("FRESHET_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "the golden cases are present");
    let mut mismatches = Vec::new();
    for case in &cases {
        let sql = std::fs::read_to_string(case).unwrap();
        let actual = render(&engine, &sql).await;
        let out = case.with_extension("out");
        if update {
            std::fs::write(&out, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&out).unwrap_or_default();
        if expected != actual {
            mismatches.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                case.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden mismatches (FRESHET_UPDATE_GOLDEN=1 rewrites them):\n{}",
        mismatches.join("\n")
    );
}
