//! freshet-query: DataFusion over the Delta tables of a warehouse.
//!
//! Not built yet: this crate only holds its place in the workspace so the dependency direction
//! (`query` → `storage`) is checked from the start. See issue "SQL over the warehouse".
