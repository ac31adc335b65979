//! The operator's metrics: names the operator chart's alerts use exist in its exposition.

use concord_operator::metrics::Metrics;

#[test]
fn operator_alerts_use_exported_metrics() {
    let m = Metrics::new();
    m.set_phase("ns", "kv", Some(concord_operator::crd::Phase::QuorumLost));
    m.duration.with_label_values::<&str>(&[]).observe(0.1);
    let text = m.render();
    let exported: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    assert!(
        text.contains("concord_operator_cluster_quorum_lost{cluster=\"kv\",namespace=\"ns\"} 1")
    );
    assert!(text.contains("concord_operator_clusters{phase=\"QuorumLost\"} 1"));

    let alerts = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/concordkv-operator/files/alerts.yaml"
    ))
    .expect("alerts");
    let mut used = 0;
    for word in alerts.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("concord_operator_") {
            assert!(exported.contains(&word), "alert uses {word}, not exported");
            used += 1;
        }
    }
    assert!(used >= 2);

    // A deleted cluster leaves no series behind.
    m.set_phase("ns", "kv", None);
    assert!(!m.render().contains("cluster=\"kv\""));
    assert!(m
        .render()
        .contains("concord_operator_clusters{phase=\"QuorumLost\"} 0"));
}
