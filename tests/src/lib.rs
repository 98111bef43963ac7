//! Helpers for freshet's end-to-end tests.
