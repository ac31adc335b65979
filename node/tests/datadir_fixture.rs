//! Every data dir a released format wrote must open in every later build and serve what it
//! held. The fixtures under `tests/fixtures/datadir-v*/` are made by `make-datadir.sh` and kept
//! forever: one per on-disk format change. `datadir-v0` was written by the last release before
//! formats were versioned (commit bad0571), `datadir-v1` by the first versioned one, `datadir-v2`
//! by the first MVCC store (snapshot format 2), `datadir-v3` by the first with users and roles
//! (snapshot format 4).

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::Cluster;
use serde_json::Value;

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "expected.json" {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn fixtures() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut found: Vec<_> = fs::read_dir(&root)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("datadir-v"))
        })
        .collect();
    // By number, oldest first: datadir-v10 comes after datadir-v9.
    found.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| {
                n.to_string_lossy()
                    .strip_prefix("datadir-v")?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap_or(u32::MAX)
    });
    found
}

#[tokio::test]
async fn every_fixture_data_dir_opens_and_serves_its_keys() {
    let all = fixtures();
    assert!(!all.is_empty(), "no fixtures found");
    for fixture in all {
        let expected: Value =
            serde_json::from_slice(&fs::read(fixture.join("expected.json")).expect("expected"))
                .expect("expected.json");
        let mut c = Cluster::configure(1, "", Vec::new());
        assert_eq!(expected["node"], c.nodes[0].name);
        copy_dir(&fixture, &c.nodes[0].data_dir);
        c.spawn(0);
        c.wait_leader(Duration::from_secs(20)).await;
        let present = expected["present"].as_object().expect("present");
        assert!(
            present.len() > 50,
            "{}: a fixture with data",
            fixture.display()
        );
        for (key, value) in present {
            let (code, body) = c.get(0, &format!("/api/get?key={key}")).await;
            assert_eq!(code, 200, "{}: {key}: {body}", fixture.display());
            assert_eq!(body["value"], *value, "{}: {key}", fixture.display());
        }
        for key in expected["absent"].as_array().expect("absent") {
            let key = key.as_str().expect("key");
            let (code, _) = c.get(0, &format!("/api/get?key={key}")).await;
            assert_eq!(code, 404, "{}: {key} was deleted", fixture.display());
        }
        // And it goes on working: a write on top of the old data survives a restart.
        let (code, body) = c.set(0, "after/upgrade", "yes").await;
        assert_eq!(code, 200, "{body}");
        c.terminate(0);
        c.spawn(0);
        c.wait_leader(Duration::from_secs(20)).await;
        c.wait_value(0, "after/upgrade", "yes", Duration::from_secs(10))
            .await;
        let (code, body) = c.get(0, "/api/get?key=fixture/key-001").await;
        assert_eq!(
            (code, &body["value"]),
            (200, &expected["present"]["fixture/key-001"])
        );
    }
}

/// A data dir from a newer release is refused at start, naming the file and the format,
/// before anything in it is changed.
#[tokio::test]
async fn a_data_dir_in_a_newer_format_is_refused_naming_the_file() {
    let fixture = fixtures().pop().expect("a fixture");
    let mut c = Cluster::configure(1, "", Vec::new());
    copy_dir(&fixture, &c.nodes[0].data_dir);
    let segments = c.nodes[0].data_dir.join("raft/segments");
    let first = fs::read_dir(&segments)
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .min()
        .expect("a segment");
    let mut bytes = fs::read(&first).expect("segment");
    assert_eq!(&bytes[..6], b"CKVLOG", "fixture segments are versioned");
    bytes[6..8].copy_from_slice(&99u16.to_le_bytes());
    fs::write(&first, &bytes).expect("write");
    c.spawn(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.nodes[0].is_running() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !c.nodes[0].is_running(),
        "a node on a newer format must not start"
    );
    let log = c.log_text(0);
    assert!(
        log.contains(&first.display().to_string()) && log.contains("format 99"),
        "{log}"
    );
    assert_eq!(fs::read(&first).expect("segment"), bytes, "left untouched");
}
