//! freshet-reports: report definitions and runs, triggers, and dashboards.
//!
//! Not built yet: this crate only holds its place in the workspace so the dependency direction
//! (`reports` → `query`) is checked from the start. See issues "reports" and "Dashboards".
