//! Prints the ConcordCluster CRD; its output is committed as manifests/crds/concordclusters.yaml.
fn main() {
    print!("{}", concord_operator::crd_yaml());
}
