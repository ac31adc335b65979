//! concordctl's commands that are more than one request: the load generator and the smoke check.

pub mod bench;
pub mod check;
