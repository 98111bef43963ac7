//! freshet's one integration-test binary.
