//! The operator end to end on the simulated cluster: the real `concord-operator` binary, pods
//! that are real `concord-node` processes in network namespaces of their own, DNS by hosts
//! files. The short stories (the current build only) run in the test command; the full run is
//! `scripts/e2e-sim.sh`. Needs root: without it each story says so loudly and does nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord_sim::cluster::SimCluster;
use concord_sim::kubelet::Images;
use serde_json::Value;

const CR: &str = "/apis/concordkv.io/v1alpha1/namespaces/default/concordclusters/example";

/// The workspace's binaries, built beside the test (`cargo test --workspace` builds them).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .to_path_buf();
    for b in ["concord-node", "concordctl", "concord-operator"] {
        assert!(
            dir.join(b).exists(),
            "{} not built: run cargo test --workspace",
            dir.join(b).display()
        );
    }
    dir
}

fn can_run() -> bool {
    match concord_sim::network::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!(
                "\n!!!!! SKIPPED: {why}; the operator end-to-end stories did not run !!!!!\n"
            );
            false
        }
    }
}

fn report(story: &str, what: &str, took: Duration) {
    eprintln!("[e2e-sim] {story}: {what} in {:.1}s", took.as_secs_f64());
}

/// The cluster's status when `phase` is Running with `n` ready healthy members.
fn running_with(c: &SimCluster, n: usize) -> Option<Value> {
    let cr = c.get(CR)?;
    let st = &cr["status"];
    let healthy = st["members"].as_array().map_or(0, |m| {
        m.iter()
            .filter(|m| m["healthy"] == true && m["role"] == "voter")
            .count()
    });
    (st["phase"] == "Running" && st["readyReplicas"] == n && healthy == n).then(|| st.clone())
}

/// The client certificate and CA an application gets from the cluster's Secrets.
fn client_files(c: &SimCluster, dir: &Path) -> Vec<String> {
    let secret = c
        .get("/api/v1/namespaces/default/secrets/example-client-tls")
        .expect("the client Secret");
    let mut args = Vec::new();
    for (key, flag) in [
        ("ca.crt", "--cacert"),
        ("tls.crt", "--cert"),
        ("tls.key", "--key"),
    ] {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(secret["data"][key].as_str().expect("key"))
            .expect("base64");
        let path = dir.join(key);
        std::fs::write(&path, bytes).expect("write");
        args.push(flag.to_string());
        args.push(path.display().to_string());
    }
    args
}

fn ctl(c: &SimCluster, bins: &Path, tls: &[String], args: &[&str]) -> (bool, String) {
    let out = c
        .client_command(&bins.join("concordctl"))
        .args(["--endpoints", "https://example.default.svc:8081"])
        .args(tls)
        .args(args)
        .output()
        .expect("concordctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Story 1: `kubectl apply -f manifests/examples/minimal.yaml` gives three members Running,
/// with the status and printer columns right, and an application writes and reads through
/// the client Service's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_1_the_minimal_example_comes_up_and_serves_by_its_service_name() {
    if !can_run() {
        return;
    }
    let bins = bin_dir();
    let dir = tempfile::tempdir().expect("dir");
    let images = Images {
        default: bins.clone(),
        by_reference: Vec::new(),
    };
    let mut c = SimCluster::start(dir.path(), images)
        .await
        .expect("the simulated cluster");
    c.start_operator(&bins.join("concord-operator"))
        .expect("operator");
    let started = Instant::now();
    c.apply_yaml(include_str!("../../manifests/examples/minimal.yaml"))
        .expect("apply");
    let status = c
        .until("3 members are Running", Duration::from_secs(60), |c| {
            running_with(c, 3)
        })
        .await
        .unwrap_or_else(|e| {
            let st = c.get(CR).map(|cr| cr["status"].clone()).unwrap_or_default();
            panic!("{e}\nstatus: {st}")
        });
    report("story 1", "3 members Running", started.elapsed());
    assert!(
        status["leader"]
            .as_str()
            .is_some_and(|l| l.starts_with("example-")),
        "{status}"
    );
    assert!(status["clusterId"].is_string(), "{status}");
    let sts = c
        .get("/apis/apps/v1/namespaces/default/statefulsets/example")
        .expect("the StatefulSet");
    assert_eq!(sts["status"]["readyReplicas"], 3);

    let tls = client_files(&c, dir.path());
    let (ok, text) = ctl(&c, &bins, &tls, &["set", "story1", "hello"]);
    assert!(ok, "a write through the Service name: {text}");
    let (ok, text) = ctl(&c, &bins, &tls, &["get", "story1"]);
    assert!(ok && text.contains("hello"), "{text}");
    report(
        "story 1",
        "write and read through example.default.svc",
        started.elapsed(),
    );
}
