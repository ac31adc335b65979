//! Prints a CRD generated from the Rust types: `crdgen` the ConcordCluster CRD, `crdgen backup`
//! the ConcordBackup one, `crdgen backup-schedule` the ConcordBackupSchedule one. Their output is committed under manifests/crds/.
fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("backup") => print!("{}", concord_operator::backup_crd_yaml()),
        Some("backup-schedule") => print!("{}", concord_operator::backup_schedule_crd_yaml()),
        _ => print!("{}", concord_operator::crd_yaml()),
    }
}
