//! What the node tells operators about itself: logs and traces ([`traces`]), Prometheus metrics
//! ([`metrics`]).

pub mod metrics;
pub mod traces;

pub use traces::*;
