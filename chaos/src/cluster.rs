//! Real `concord-node` processes on loopback, with the faults the nemeses need: kill -9,
//! SIGSTOP/SIGCONT, and damage to a stopped node's log tail.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

pub struct Proc {
    pub name: String,
    /// The host address (127.0.0.1, or the node's namespace address).
    pub ip: String,
    /// The namespace the node runs in, if any.
    pub netns: Option<String>,
    pub peer_port: u16,
    pub api_port: u16,
    /// etcd's v3 API (gRPC).
    pub etcd_port: u16,
    pub data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub paused: bool,
    /// `http`, or `https` when the run has TLS on.
    scheme: &'static str,
}

impl Proc {
    pub fn api(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.ip, self.api_port)
    }
    /// `host:port` of etcd's v3 API.
    pub fn etcd_addr(&self) -> String {
        format!("{}:{}", self.ip, self.etcd_port)
    }
    pub fn peer_addr(&self) -> String {
        format!("{}:{}", self.ip, self.peer_port)
    }
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct ChaosCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Proc>,
    node_bin: PathBuf,
    /// Separate hosts (network namespaces), when partitions are wanted and possible.
    pub hosts: Option<crate::netns::Hosts>,
    /// Each data dir is its own small tmpfs (for the full-disk fault).
    pub tmpfs: bool,
    /// How clients reach the members (TLS and a root certificate when the run is secure).
    pub clients: crate::security::Clients,
}

/// A free port this process has not handed out before: a port is free again once its probe
/// closes, and the three each node takes are bound only when it starts.
fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl ChaosCluster {
    /// Writes a static n-node configuration and starts every node.
    pub fn start(
        n: usize,
        node_bin: &Path,
        hosts: Option<crate::netns::Hosts>,
        tmpfs: bool,
        secure: bool,
    ) -> anyhow::Result<ChaosCluster> {
        let dir = tempfile::tempdir()?;
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let ip = |i: usize| match &hosts {
            Some(h) => h.ips[i].clone(),
            None => "127.0.0.1".to_string(),
        };
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (p, _, _))| format!("    - \"n{}:{}:{p}\"", i + 1, ip(i)))
            .collect();
        let security = if secure {
            let ips: Vec<String> = (0..n).map(ip).collect();
            Some(crate::security::Security::mint(
                &dir.path().join("certs"),
                &ips,
            )?)
        } else {
            None
        };
        let tls_yaml = security.as_ref().map(|s| s.yaml()).unwrap_or_default();
        let clients = crate::security::Clients { security };
        let mut nodes = Vec::new();
        for (i, (peer_port, api_port, etcd_port)) in ports.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let data_dir = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.yaml"));
            let host = ip(i);
            // Fast elections and frequent snapshots, so faults exercise elections, snapshot
            // transfer and log purging within a short run.
            fs::write(
                &config,
                format!(
                    "server:\n  nodeId: {name}\n  listenAddr: \"{host}:{peer_port}\"\n  apiAddr: \"{host}:{api_port}\"\n  etcdAddr: \"{host}:{etcd_port}\"\n  dataDir: \"{}\"\n  peers:\n{}\nraft:\n  heartbeatIntervalMs: 50\n  electionTimeoutMinMs: 300\n  electionTimeoutMaxMs: 600\n  snapshotThreshold: 300\n  logsToKeepAfterSnapshot: 50\n  maxPromoteLag: 100\nlimits:\n  requestTimeoutMs: 2000\n{tls_yaml}",
                    data_dir.display(),
                    peers.join("\n")
                ),
            )?;
            nodes.push(Proc {
                log: dir.path().join(format!("{name}.log")),
                ip: host,
                netns: hosts.as_ref().map(|h| h.namespaces[i].clone()),
                name,
                peer_port,
                api_port,
                etcd_port,
                data_dir,
                config,
                child: None,
                paused: false,
                scheme: clients.scheme(),
            });
        }
        let mut c = ChaosCluster {
            dir,
            nodes,
            node_bin: node_bin.to_path_buf(),
            hosts,
            tmpfs: false,
            clients,
        };
        if tmpfs {
            for i in 0..n {
                let d = c.nodes[i].data_dir.clone();
                fs::create_dir_all(&d)?;
                let out = Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "size=128m", "tmpfs"])
                    .arg(&d)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "mounting a tmpfs on {}: {}",
                    d.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                c.tmpfs = true;
            }
        }
        for i in 0..n {
            c.spawn(i)?;
        }
        Ok(c)
    }

    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        // `ip netns exec` execs the node in place, so the child's pid is the node's.
        let mut cmd = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.node_bin);
                c
            }
            None => Command::new(&self.node_bin),
        };
        let child = cmd
            .arg("-config")
            .arg(&node.config)
            .env("CONCORD_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.node_bin.display()))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(c) = &self.nodes[i].child {
            signal(c.id(), "STOP");
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(c) = &self.nodes[i].child {
            signal(c.id(), "CONT");
        }
        self.nodes[i].paused = false;
    }

    /// Damages the end of a stopped node's newest log segment, as a crash mid-write would:
    /// cuts off some bytes, or flips a byte of the last record. Returns what it did.
    pub fn damage_log_tail(&mut self, i: usize, cut: bool, amount: u64) -> anyhow::Result<String> {
        anyhow::ensure!(!self.nodes[i].running(), "node must be stopped");
        let seg_dir = self.nodes[i].data_dir.join("raft").join("segments");
        let mut segs: Vec<PathBuf> = fs::read_dir(&seg_dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segs.sort();
        let Some(last) = segs.pop() else {
            return Ok("no log segment to damage".into());
        };
        let len = fs::metadata(&last)?.len();
        if len == 0 {
            return Ok("newest segment is empty".into());
        }
        if cut {
            let n = amount.min(len);
            let f = fs::OpenOptions::new().write(true).open(&last)?;
            f.set_len(len - n)?;
            Ok(format!("cut {n} bytes off {}", last.display()))
        } else {
            let mut bytes = fs::read(&last)?;
            let at = bytes.len() - 1 - (amount as usize % bytes.len().min(8));
            bytes[at] ^= 0x5a;
            fs::write(&last, bytes)?;
            Ok(format!("flipped byte {at} of {}", last.display()))
        }
    }

    /// Fills node `i`'s tmpfs with a filler file until the disk is full; returns bytes written.
    pub fn fill_disk(&self, i: usize) -> anyhow::Result<u64> {
        use std::io::Write;
        anyhow::ensure!(self.tmpfs, "data dirs are not on tmpfs");
        let mut f = fs::File::create(self.nodes[i].data_dir.join("filler"))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        while f.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        // Top up the last partial megabyte too.
        while f.write_all(&chunk[..4096]).is_ok() {
            written += 4096;
        }
        Ok(written)
    }

    pub fn free_disk(&self, i: usize) -> anyhow::Result<()> {
        fs::remove_file(self.nodes[i].data_dir.join("filler"))?;
        Ok(())
    }

    pub fn log_text(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.kill9(i);
            if self.tmpfs {
                let _ = Command::new("umount").arg(&self.nodes[i].data_dir).status();
            }
        }
        // CONCORD_CHAOS_KEEP=1 keeps the data dirs and logs for inspection.
        if std::env::var_os("CONCORD_CHAOS_KEEP").is_some() {
            let kept = std::env::temp_dir().join(format!("concord-chaos-{}", std::process::id()));
            if fs::rename(self.dir.path(), &kept).is_ok() {
                eprintln!("kept chaos cluster data in {}", kept.display());
            }
        }
    }
}
