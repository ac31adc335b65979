//! Cluster DNS through hosts files: every pod with a hostname and subdomain is
//! `<hostname>.<subdomain>.<ns>.svc[.cluster.local]`, a headless Service's name is every pod
//! it selects, and any other Service's name is its ready pods (one line each; resolvers try
//! them in order), as `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc[.cluster.local]`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::apiserver::selector::Selector;
use crate::apiserver::ApiServer;
use crate::network::Network;
use crate::statefulset::is_ready;

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The hosts file for the cluster as it is now.
pub fn hosts(api: &ApiServer) -> String {
    let pods = api.list_path("/api/v1/pods", "");
    let mut lines = vec!["127.0.0.1 localhost".to_string()];
    for p in &pods {
        let (ip, host, sub) = (
            str_of(&p["status"]["podIP"]),
            str_of(&p["spec"]["hostname"]),
            str_of(&p["spec"]["subdomain"]),
        );
        if ip.is_empty() || host.is_empty() || sub.is_empty() || p["status"]["phase"] != "Running" {
            continue;
        }
        let fqdn = format!("{host}.{sub}.{}.svc", str_of(&p["metadata"]["namespace"]));
        lines.push(format!("{ip} {fqdn} {fqdn}.cluster.local"));
    }
    for svc in api.list_path("/api/v1/services", "") {
        let ns = str_of(&svc["metadata"]["namespace"]);
        let name = str_of(&svc["metadata"]["name"]);
        let headless = svc["spec"]["clusterIP"] == "None";
        let publish_all = headless || svc["spec"]["publishNotReadyAddresses"] == true;
        let Some(selector) = svc["spec"]["selector"].as_object() else {
            continue;
        };
        let text = selector
            .iter()
            .map(|(k, v)| format!("{k}={}", str_of(v)))
            .collect::<Vec<_>>()
            .join(",");
        let Ok(sel) = Selector::parse(&text) else {
            continue;
        };
        let mut selected: Vec<&Value> = pods
            .iter()
            .filter(|p| str_of(&p["metadata"]["namespace"]) == ns && sel.matches_labels(p))
            .filter(|p| {
                !str_of(&p["status"]["podIP"]).is_empty()
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter(|p| publish_all || is_ready(p))
            .collect();
        selected.sort_by_key(|p| str_of(&p["metadata"]["name"]).to_string());
        for p in selected {
            lines.push(format!(
                "{} {name}.{ns}.svc {name}.{ns}.svc.cluster.local {name}.{ns} {name}",
                str_of(&p["status"]["podIP"])
            ));
        }
    }
    lines.join("\n") + "\n"
}

pub async fn run(api: ApiServer, net: Arc<Network>) {
    loop {
        let changed = api.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        net.set_hosts(&hosts(&api));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The addresses `name` has in the cluster's DNS now.
pub fn lookup(api: &ApiServer, name: &str) -> Vec<std::net::IpAddr> {
    hosts(api)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let ip = parts.next()?.parse().ok()?;
            parts.any(|n| n == name).then_some(ip)
        })
        .collect()
}

/// Cluster DNS for an HTTP client in the test process (outside every namespace): what the
/// hosts files say, looked up at each connection.
pub struct Resolver(pub ApiServer);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ips = lookup(&self.0, name.as_str());
        Box::pin(async move {
            if ips.is_empty() {
                return Err(format!("{} does not resolve in the cluster", name.as_str()).into());
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| std::net::SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
