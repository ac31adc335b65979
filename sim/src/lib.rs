//! A simulated Kubernetes cluster, for running the real `concord-operator` against real
//! `concord-node` processes where no cluster can run: an API server (the subset of the
//! Kubernetes API the operator and its users touch, over plain HTTP), and — built on it — the
//! controllers and kubelets that turn its objects into processes.

pub mod apiserver;
pub mod cluster;
pub mod dns;
pub mod kubelet;
pub mod network;
pub mod statefulset;
