//! Network namespaces, veth links and cgroup v2 subtrees made by a test,
//! removed on drop, and leftovers of killed runs removed at the next start.
//!
//! Every name carries the PID of the test process that made it
//! (`knit-<pid>-…`); [`clean_stale`] removes the namespaces, bpffs pin
//! directories and cgroups of PIDs that no longer run. Nothing here touches
//! the root namespace's addresses or routes: links are created directly
//! inside test namespaces.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Prefix of everything a test run creates.
pub const PREFIX: &str = "knit-";

/// The prefix of this process's objects.
pub fn run_prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub use knit_testkit::process::tcp_open;

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `knit-<pid>-<tag>` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("{}{tag}", run_prefix());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip args…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs `program args…` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs `program args…` inside the namespace and returns how it went,
    /// failure included.
    pub fn exec_status(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.name.as_str(), program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// Whether a TCP connection to `addr:port` succeeds from inside.
    pub fn tcp_open(&self, addr: &str, port: u16) -> bool {
        tcp_open(&self.name, addr, port)
    }

    /// Creates a veth pair from `self` (named `local`) to `peer` (named
    /// `remote`), both up.
    pub fn veth_to(&self, local: &str, peer: &Netns, remote: &str) {
        self.ip(&[
            "link",
            "add",
            local,
            "type",
            "veth",
            "peer",
            "name",
            remote,
            "netns",
            peer.name(),
        ]);
        self.ip(&["link", "set", local, "up"]);
        peer.ip(&["link", "set", remote, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A cgroup v2 hierarchy mounted for this run with one subtree
/// `knit-<pid>` in it; the subtree is removed and the mount undone on drop.
#[derive(Debug)]
pub struct CgroupRoot {
    mount: PathBuf,
    subtree: PathBuf,
}

impl CgroupRoot {
    /// Mounts cgroup2 at a fresh directory and creates the run's subtree.
    pub fn new() -> Self {
        let mount = std::env::temp_dir().join(format!("{}cgroup2", run_prefix()));
        std::fs::create_dir_all(&mount).expect("cgroup mount point");
        if !is_cgroup2(&mount) {
            sh("mount", &["-t", "cgroup2", "none", &mount.to_string_lossy()]);
        }
        clean_stale_cgroups(&mount);
        let subtree = mount.join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::create_dir_all(&subtree);
        Self { mount, subtree }
    }

    /// Creates (if needed) and returns `<subtree>/<rel>`.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let d = self.subtree.join(rel);
        std::fs::create_dir_all(&d).expect("creating a cgroup");
        d
    }
}

impl Default for CgroupRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.subtree);
        let _ = Command::new("umount").arg(&self.mount).output();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

fn is_mounted(path: &Path, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(1) == Some(&&*path.to_string_lossy()) && f.get(2) == Some(&fstype)
        })
    })
}

fn is_cgroup2(path: &Path) -> bool {
    is_mounted(path, "cgroup2")
}

pub use knit_testkit::bpffs::BpffsRoot;

/// A bpffs for this run, mounted outside `/sys` (which `ip netns exec`
/// remounts), so agents in node namespaces share it and their pins outlive
/// them; unmounted when dropped.
pub fn run_bpffs() -> BpffsRoot {
    BpffsRoot::mount(std::env::temp_dir().join(format!("{}bpffs", run_prefix())))
}

/// Removes a cgroup directory tree bottom-up (cgroups are removed with
/// rmdir once empty of processes; a process still in one is killed first).
pub fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn pid_of(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn is_stale(name: &str) -> bool {
    pid_of(name).is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
}

fn clean_stale_cgroups(mount: &Path) {
    clean_cgroups(mount, &is_stale);
}

fn clean_cgroups(mount: &Path, matching: &dyn Fn(&str) -> bool) {
    for e in std::fs::read_dir(mount).into_iter().flatten().flatten() {
        if matching(&e.file_name().to_string_lossy()) {
            remove_cgroup_tree(&e.path());
        }
    }
}

/// Removes namespaces, bpffs mounts (with their pins) and cgroup mounts
/// left by test runs whose process is gone.
pub fn clean_stale() {
    clean(&is_stale);
}

/// Removes everything this process made (for a Ctrl-C handler: drop
/// handlers do not run when the process is interrupted).
pub fn clean_own() {
    clean(&|name| pid_of(name) == Some(std::process::id()));
}

/// `TempDir` names end in `-<pid>-<n>`.
fn temp_dir_owner(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.strip_prefix(PREFIX)?.rsplitn(3, '-').collect();
    let pid: u32 = parts.get(1)?.parse().ok()?;
    Some(format!("{PREFIX}{pid}-"))
}

fn clean(matching: &dyn Fn(&str) -> bool) {
    for root in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with("-cgroup2") || name.ends_with("-bpffs") {
                continue;
            }
            if temp_dir_owner(&name).is_some_and(|owner| matching(&owner)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if matching(name) {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !matching(&name) {
            continue;
        }
        if name.ends_with("-cgroup2") {
            if is_cgroup2(&e.path()) {
                clean_cgroups(&e.path(), matching);
                let _ = Command::new("umount").arg(e.path()).output();
            }
            let _ = std::fs::remove_dir(e.path());
        } else if name.ends_with("-bpffs") {
            if is_mounted(&e.path(), "bpf") {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = Command::new("umount").arg(e.path()).output();
            }
            let _ = std::fs::remove_dir(e.path());
        }
    }
}
