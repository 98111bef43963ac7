//! Dashboards: panels over report outputs, served by an axum router as HTML with inline SVG (plotters), PNG export,
//! and auto-refresh when a new report run lands.
//!
//! - [`DashboardConfig`] (`config.rs`): the `[[dashboards]]` definitions and their validation;
//!   [`DashboardConfig::telemetry`] is the default pipeline's dashboard.
//! - `data.rs`: a report's latest output → [`PanelData`] (series, table rows, a single value, "no data yet", or a
//!   problem the panel shows).
//! - `render.rs`: [`PanelData`] → SVG or PNG with plotters (embedded font, no system fonts).
//! - [`router`] (`server.rs`): the HTTP face, nested at `/dashboards`.
//! - [`OpsSampler`] (`ops.rs`): `/dashboards/_ops`, from the Prometheus text `/metrics` serves.

mod config;
mod data;
mod ops;
mod render;
mod server;

pub use config::{
    ChartKind, DashboardConfig, DashboardConfigError, PANELS_MAX, PanelConfig, Y_COLUMNS_MAX, validate,
};
pub use data::{Latest, OutputCache, PanelData, ReportOutput, Series, X, XKind, panel_data};
pub use ops::{MetricsSource, OPS_NAME, OpsSampler, Sample, parse_prometheus};
pub use render::{PNG_SIDE_MAX, PNG_SIDE_MIN, SVG_SIZE, decimate, format_number, format_time, png, svg};
pub use server::{Dashboards, POLL_INTERVAL_MS, RENDERS_MAX, router};
