//! The simulated cluster's network: a bridge in the root namespace (where the API server and
//! the kubelet's prober live) and one network namespace per pod (and one for the operator, one
//! for clients), each with its own address on the bridge. Names resolve through
//! `/etc/netns/<ns>/hosts`, which `ip netns exec` bind-mounts over `/etc/hosts`: the DNS
//! controller rewrites every such file in place (same inode, so running processes see it).
//! Needs root; addresses stay inside 10.214.0.0/16.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};
use parking_lot::Mutex;

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

/// Whether this process can make network namespaces (root, `ip` present).
pub fn available() -> Result<(), String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Err("the simulated cluster needs root (network namespaces)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("the simulated cluster needs `ip` (iproute2)".into());
    }
    Ok(())
}

/// One host on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub netns: String,
    pub ip: String,
    veth: String,
}

pub struct Network {
    tag: u32,
    bridge: String,
    subnet: u32,
    next: AtomicU32,
    hosts: Mutex<BTreeSet<String>>,
    /// What every host's hosts file says.
    hosts_text: Mutex<String>,
}

impl Network {
    pub fn create() -> anyhow::Result<Network> {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let call = CREATED.fetch_add(1, Ordering::Relaxed);
        let tag = (std::process::id() % 1000) * 10 + call % 10;
        let subnet = tag % 250;
        let bridge = format!("csim{tag}");
        let _ = run(&["ip", "link", "del", &bridge]);
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.214.{subnet}.1/24"),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        Ok(Network {
            tag,
            bridge,
            subnet,
            next: AtomicU32::new(10),
            hosts: Mutex::default(),
            hosts_text: Mutex::new("127.0.0.1 localhost\n".into()),
        })
    }

    /// The bridge's own address (the root namespace: API server, prober).
    pub fn gateway(&self) -> String {
        format!("10.214.{}.1", self.subnet)
    }

    /// A new host with its own namespace and address.
    pub fn add_host(&self) -> anyhow::Result<Host> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n > 250 {
            bail!("the simulated network has no addresses left");
        }
        let netns = format!("csim{}h{n}", self.tag);
        let veth = format!("vs{}h{n}", self.tag);
        let peer = format!("vp{}h{n}", self.tag);
        let ip = format!("10.214.{}.{n}", self.subnet);
        let _ = run(&["ip", "netns", "del", &netns]);
        run(&["ip", "netns", "add", &netns])?;
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &netns])?;
        run(&["ip", "link", "set", &veth, "master", &self.bridge])?;
        run(&["ip", "link", "set", &veth, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", netns.as_str()];
            all.extend_from_slice(args);
            run(&all)
        };
        inside(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &peer])?;
        inside(&["ip", "link", "set", &peer, "up"])?;
        inside(&["ip", "link", "set", "lo", "up"])?;
        let dir = format!("/etc/netns/{netns}");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(format!("{dir}/hosts"), self.hosts_text.lock().as_bytes())?;
        self.hosts.lock().insert(netns.clone());
        Ok(Host { netns, ip, veth })
    }

    pub fn remove_host(&self, host: &Host) {
        let _ = run(&["ip", "netns", "del", &host.netns]);
        let _ = run(&["ip", "link", "del", &host.veth]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", host.netns));
        self.hosts.lock().remove(&host.netns);
    }

    /// Every host's resolver says `text` from now on, rewritten in place (running processes
    /// have the file bind-mounted).
    pub fn set_hosts(&self, text: &str) {
        let mut current = self.hosts_text.lock();
        if *current == text {
            return;
        }
        *current = text.to_string();
        for netns in self.hosts.lock().iter() {
            let path = format!("/etc/netns/{netns}/hosts");
            let written = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
            if let Err(e) = written {
                tracing::warn!(%path, error = %e, "cannot update a hosts file");
            }
        }
    }

    /// `ip netns exec <host> ...` as a command to finish setting up.
    pub fn command_in(host: &Host, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.netns]).arg(program);
        c
    }
}

impl Network {
    /// Removes every namespace and the bridge (idempotent).
    pub fn cleanup(&self) {
        for netns in std::mem::take(&mut *self.hosts.lock()) {
            let _ = run(&["ip", "netns", "del", &netns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{netns}"));
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.cleanup();
    }
}
