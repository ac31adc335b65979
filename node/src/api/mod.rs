//! What clients talk to: the seed's HTTP/JSON API with probes and metrics (`http`), and etcd's
//! v3 API (`etcd`).

pub mod etcd;
pub mod http;
