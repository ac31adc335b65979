//! What clients talk to. Today one listener: the seed's HTTP/JSON API with probes and metrics.

pub mod http;
