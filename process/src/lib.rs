//! freshet-process: delivery streams (Firehose semantics) from the stream store into Delta tables, and the
//! function runtime that drives handlers from triggers.
//!
//! Not built yet: this crate only holds its place in the workspace so the dependency direction
//! (`process` → `storage`) is checked from the start. See issue "Delivery streams".
