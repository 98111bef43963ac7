//! Report outputs with several writers at once (report processes, Lambda invocations, `freshet reports run` beside
//! the runtime), on a real S3-compatible server (`moto_server` on 127.0.0.1) and on a local directory. Each writer is
//! its own [`Reporter`] over its own store client, as separate processes would be; only the compare-and-swap writes
//! of `run.json` and `latest` keep them apart:
//! - many writers of one run: exactly one finishes it, the others leave it to that one (skipped), and the record ends
//!   `completed`;
//! - runs over versions 1..=N finishing in any order: `latest` ends at version N, never moved back.

use std::collections::HashMap;
use std::sync::Arc;

use freshet_query::{QueryEngine, Warehouse};
use freshet_reports::{CancellationToken, OutputStore, ReportConfig, Reporter, RunStatus};
use freshet_tests::s3::{s3_options, start_moto};

const WRITERS: usize = 4;
const VERSIONS: u64 = 12;

fn report() -> ReportConfig {
    serde_json::from_value(serde_json::json!({
        "name": "race",
        "sql": "SELECT 42 AS answer",
        "trigger": {"tables": ["t"]},
        "outputs": ["json", "csv"],
        "attempts_max": 1,
    }))
    .unwrap()
}

fn writers(open: impl Fn() -> Warehouse) -> Vec<Reporter> {
    (0..WRITERS)
        .map(|_| {
            let engine = QueryEngine::new(open(), Default::default());
            Reporter::new(Arc::new(engine), vec![report()]).unwrap()
        })
        .collect()
}

/// Run `jobs` (writer, version) at once, each on its own task; the outcomes in job order.
async fn run_at_once(jobs: Vec<(Reporter, u64)>) -> Vec<freshet_reports::RunOutcome> {
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|(writer, version)| {
            tokio::spawn(async move {
                writer
                    .run(
                        &report(),
                        &[("t".to_string(), version)],
                        &CancellationToken::new(),
                    )
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    outcomes
}

async fn one_run_many_writers(writers: &[Reporter], outputs: &OutputStore) {
    let outcomes = run_at_once(writers.iter().map(|w| (w.clone(), 7)).collect()).await;
    let finished: Vec<_> = outcomes.iter().filter(|o| !o.skipped).collect();
    assert_eq!(finished.len(), 1, "{outcomes:?}");
    assert_eq!(finished[0].record.status, RunStatus::Completed);
    let record = outputs.record("race", "t@v7").await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Completed, "{record:?}");
    assert_eq!(record.rows, Some(1));
    assert!(record.attempts as usize <= WRITERS, "{record:?}");
    let latest = outputs.latest("race").await.unwrap().unwrap();
    assert_eq!(latest.run_id, "t@v7");
    let (result, _) = outputs
        .get("reports/race/runs/t@v7/result.json", None)
        .await
        .unwrap()
        .unwrap();
    let result: serde_json::Value = serde_json::from_slice(&result).unwrap();
    assert_eq!(result["rows"], serde_json::json!([{"answer": 42}]));
}

async fn latest_never_moves_back(writers: &[Reporter], outputs: &OutputStore) {
    // Versions dealt round-robin to the writers, all runs at once: they finish in no particular order.
    let jobs = (1..=VERSIONS)
        .map(|v| (writers[v as usize % writers.len()].clone(), 100 + v))
        .collect();
    for outcome in run_at_once(jobs).await {
        assert!(
            !outcome.skipped && outcome.record.status == RunStatus::Completed,
            "{outcome:?}"
        );
    }
    let latest = outputs.latest("race").await.unwrap().unwrap();
    assert_eq!(latest.run_id, format!("t@v{}", 100 + VERSIONS), "{latest:?}");
    let history = outputs.history("race").await.unwrap();
    assert_eq!(history.len() as u64, VERSIONS + 1, "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_report_outputs_with_concurrent_writers_on_moto() {
    let (_moto, addr) = start_moto().await;
    let options: HashMap<String, String> = s3_options(&addr);
    let open = || Warehouse::open("s3://freshet/race", options.clone()).unwrap();
    let outputs = OutputStore::for_warehouse(&open()).unwrap();
    let writers = writers(open);
    one_run_many_writers(&writers, &outputs).await;
    latest_never_moves_back(&writers, &outputs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_report_outputs_with_concurrent_writers_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Warehouse::local(dir.path());
    let outputs = OutputStore::local(dir.path());
    let writers = writers(open);
    one_run_many_writers(&writers, &outputs).await;
    latest_never_moves_back(&writers, &outputs).await;
}
