//! The `freshet` binary: parses the command line, sets up logging, and hands off to the library code of each
//! stage. No domain logic lives here; see ARCHITECTURE.md for the map.

mod bench;
mod cli;
mod config;
mod deliveries;
mod lambda;
mod query;
mod reports;
mod run;
mod simulate;
mod streams;
mod up;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse_from(lambda::bootstrap_args(std::env::args_os().collect()));
    let spec = filter_spec(std::env::var("RUST_LOG").ok(), &cli.log);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(spec)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The log filter: `RUST_LOG` when set, else `--log`. deltalake's kernel logs an ERROR each time it looks at a table
/// location without a log yet, which every first start does while creating its tables; real failures there reach
/// freshet as errors that it reports with context, so that one target is off unless the filter names it
/// (`buoyant_kernel::snapshot…`).
fn filter_spec(rust_log: Option<String>, cli_log: &str) -> String {
    let spec = rust_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| cli_log.to_string());
    if spec.contains("buoyant_kernel::snapshot") {
        spec
    } else {
        format!("{spec},buoyant_kernel::snapshot::builder=off")
    }
}

#[cfg(test)]
mod tests {
    use super::filter_spec;

    #[test]
    fn the_kernels_table_probe_is_quiet_unless_asked_for() {
        assert_eq!(
            filter_spec(None, "info"),
            "info,buoyant_kernel::snapshot::builder=off"
        );
        assert_eq!(
            filter_spec(Some("warn,freshet=debug".into()), "info"),
            "warn,freshet=debug,buoyant_kernel::snapshot::builder=off"
        );
        assert_eq!(
            filter_spec(Some(" ".into()), "warn"),
            "warn,buoyant_kernel::snapshot::builder=off"
        );
        assert_eq!(
            filter_spec(None, "info,buoyant_kernel=warn"),
            "info,buoyant_kernel=warn,buoyant_kernel::snapshot::builder=off"
        );
        assert_eq!(
            filter_spec(None, "buoyant_kernel::snapshot=debug"),
            "buoyant_kernel::snapshot=debug"
        );
        for spec in [filter_spec(None, "info"), filter_spec(None, "warn,rumqttd=off")] {
            assert!(tracing_subscriber::EnvFilter::try_new(&spec).is_ok(), "{spec}");
        }
    }
}
