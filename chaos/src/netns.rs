//! Separate network hosts for the nodes: one network namespace each, joined by a bridge, so a
//! partition is a set of iptables rules inside the namespaces. Needs root (and `ip`,
//! `iptables`); traffic stays on addresses inside these namespaces.

use std::process::Command;

use anyhow::{bail, Context};

pub struct Hosts {
    bridge: String,
    pub namespaces: Vec<String>,
    pub ips: Vec<String>,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Hosts {
    /// Creates `n` namespaces with addresses 10.213.S.10+i on a fresh bridge.
    pub fn create(n: usize) -> anyhow::Result<Hosts> {
        // Unique per process and per call: the kernel tears a deleted namespace's links down
        // asynchronously, so a second set in the same process must not reuse the names.
        static CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let call = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = (std::process::id() % 10_000) * 10 + call % 10;
        let subnet = 20 + (tag % 200);
        let bridge = format!("ckvbr{tag}");
        let mut hosts = Hosts {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
            ips: Vec::new(),
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{subnet}.1/24"),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = format!("ckv{tag}n{i}");
            let host_end = format!("vh{tag}n{i}");
            let ns_end = format!("vp{tag}n{i}");
            let ip = format!("10.213.{subnet}.{}", 10 + i);
            run(&["ip", "netns", "add", &ns])?;
            hosts.namespaces.push(ns.clone());
            run(&[
                "ip", "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            run(&["ip", "link", "set", &ns_end, "netns", &ns])?;
            run(&["ip", "link", "set", &host_end, "master", &bridge])?;
            run(&["ip", "link", "set", &host_end, "up"])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &ns_end,
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", &ns_end, "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            hosts.ips.push(ip);
        }
        Ok(hosts)
    }

    /// Cuts traffic between every pair (a, b) given, both ways.
    pub fn cut(&self, pairs: &[(usize, usize)]) -> anyhow::Result<()> {
        for &(a, b) in pairs {
            run(&[
                "ip",
                "netns",
                "exec",
                &self.namespaces[a],
                "iptables",
                "-A",
                "INPUT",
                "-s",
                &self.ips[b],
                "-j",
                "DROP",
            ])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &self.namespaces[b],
                "iptables",
                "-A",
                "INPUT",
                "-s",
                &self.ips[a],
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        for ns in &self.namespaces {
            run(&["ip", "netns", "exec", ns, "iptables", "-F", "INPUT"])?;
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
