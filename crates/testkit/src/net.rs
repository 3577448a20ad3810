//! Hosts that a test can cut off from each other: each is a network namespace of its own,
//! joined by a veth pair to a bridge that lives in one more namespace of the test's. The
//! addresses exist only inside those namespaces: nothing touches the machine's own network,
//! and two tests may use the same subnet at once.
//!
//! Faults are iptables rules in a host's own namespace, dropping packets (a black hole, as
//! a partition looks to TCP); each is undone by deleting exactly the rules it added. Dropping
//! the [`Network`] kills what still runs in its namespaces and deletes them; a namespace left
//! behind by a test process that died is swept by the next [`Network::new`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Every test network's namespaces are named `<PREFIX><pid>x<n>-<host>`.
const PREFIX: &str = "stn";
/// The hosts' subnet: private to each test network.
const SUBNET: [u8; 3] = [10, 77, 0];

/// One host of a test network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Host {
    /// What the test calls it: `keeper0`, `etcd2`, `client`...
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// Which packets a cut drops, seen from the host it is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways: a partition.
    Both,
    /// Only what the host sends.
    Outbound,
    /// Only what the host receives.
    Inbound,
}

/// A fault installed by [`Network::cut`], to give back to [`Network::heal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CutId(u64);

#[derive(Debug, Clone)]
struct Rule {
    netns: String,
    chain: &'static str,
    args: Vec<String>,
}

pub struct Network {
    tag: String,
    switch: String,
    hosts: Vec<Host>,
    cuts: Mutex<(u64, BTreeMap<CutId, Vec<Rule>>)>,
}

impl Network {
    /// A network with only its switch; hosts come with [`Network::add_host`].
    pub fn new() -> Network {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        sweep_orphans();
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{PREFIX}{}x{n}", std::process::id());
        let switch = format!("{tag}-sw");
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        Network {
            tag,
            switch,
            hosts: Vec::new(),
            cuts: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// A new host on the switch, with the next free address.
    pub fn add_host(&mut self, name: &str) -> Host {
        let i = self.hosts.len();
        assert!(i < 200, "a test network holds at most 200 hosts");
        let host = Host {
            name: name.to_string(),
            netns: format!("{}-{name}", self.tag),
            ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + i as u8),
        };
        let port = format!("v{i}");
        ip(&["netns", "add", &host.netns]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.netns,
        ]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        let address = format!("{}/24", host.ip);
        ip(&["-n", &host.netns, "addr", "add", &address, "dev", "eth0"]);
        ip(&["-n", &host.netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &host.netns, "link", "set", "lo", "up"]);
        self.hosts.push(host.clone());
        host
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the test network"))
    }

    /// `program` to be run inside `host`'s namespace.
    pub fn command(&self, host: &Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns").arg("exec").arg(&host.netns).arg(program);
        cmd
    }

    /// Moves the calling thread into `host`'s namespace: every socket it opens from now on,
    /// and every thread or process it starts, is on that host. Only for a thread of its own:
    /// the clean-up kills every process whose main thread is on one of the hosts.
    pub fn enter(&self, host: &Host) {
        let file = std::fs::File::open(format!("/run/netns/{}", host.netns))
            .unwrap_or_else(|e| panic!("opening the namespace of {}: {e}", host.name));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering the namespace of {}: {e}", host.name));
    }

    /// Drops the packets between `host` and every one of `peers`, in `direction` as seen
    /// from `host`.
    pub fn cut(&self, host: &Host, peers: &[&Host], direction: Direction) -> CutId {
        let mut rules = Vec::new();
        for peer in peers.iter().filter(|p| p.ip != host.ip) {
            let peer_ip = peer.ip.to_string();
            if direction != Direction::Inbound {
                rules.push(Rule {
                    netns: host.netns.clone(),
                    chain: "OUTPUT",
                    args: vec!["-d".into(), peer_ip.clone()],
                });
            }
            if direction != Direction::Outbound {
                rules.push(Rule {
                    netns: host.netns.clone(),
                    chain: "INPUT",
                    args: vec!["-s".into(), peer_ip],
                });
            }
        }
        for rule in &rules {
            iptables(rule, "-A");
        }
        let mut cuts = self.cuts.lock().unwrap();
        cuts.0 += 1;
        let id = CutId(cuts.0);
        cuts.1.insert(id, rules);
        id
    }

    /// Undoes one cut; other cuts, even over the same packets, stay.
    pub fn heal(&self, id: CutId) {
        let rules = self.cuts.lock().unwrap().1.remove(&id);
        for rule in rules.iter().flatten() {
            iptables(rule, "-D");
        }
    }

    pub fn heal_all(&self) {
        let ids: Vec<CutId> = self.cuts.lock().unwrap().1.keys().copied().collect();
        for id in ids {
            self.heal(id);
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let namespaces: Vec<String> = self
            .hosts
            .iter()
            .map(|h| h.netns.clone())
            .chain([self.switch.clone()])
            .collect();
        for netns in &namespaces {
            remove_namespace(netns);
        }
    }
}

/// Kills what runs in `netns` and deletes it.
fn remove_namespace(netns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() {
        let me = std::process::id() as i32;
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            // A test process whose main thread entered a host would otherwise kill itself.
            if let Some(pid) = pid.parse::<i32>().ok().filter(|&p| p != me) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", netns])
        .stderr(Stdio::null())
        .status();
}

/// Removes the namespaces of test processes that are gone (killed before their clean-up).
fn sweep_orphans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(netns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = netns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(netns);
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn iptables(rule: &Rule, op: &str) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &rule.netns,
            "iptables",
            "-w",
            op,
            rule.chain,
        ])
        .args(&rule.args)
        .args(["-j", "DROP"])
        .output()
        .expect("running iptables (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "iptables {op} {} {} in {}: {}",
        rule.chain,
        rule.args.join(" "),
        rule.netns,
        String::from_utf8_lossy(&out.stderr)
    );
}
