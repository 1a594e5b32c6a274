//! Child processes and temporary directories that clean up after themselves.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `tag` and this process.
    pub fn new(tag: &str) -> Self {
        Self::new_in(&std::env::temp_dir(), tag)
    }

    /// A fresh, empty directory below `parent`.
    pub fn new_in(parent: &Path, tag: &str) -> Self {
        let dir = parent.join(format!("knit-{tag}-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        Self(dir)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A free TCP port on loopback for a server the test starts later. Ports
/// come from 20000–31999, below the kernel's ephemeral range, so an outgoing
/// connection never takes one before its server binds it; a port is handed
/// out once per test process, and the start depends on the PID so parallel
/// test binaries rarely collide.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let start = (std::process::id() as usize * 97) % 12_000;
    (0..12_000)
        .map(|i| 20_000 + ((start + i) % 12_000) as u16)
        .find(|port| !given.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .inspect(|port| {
            given.insert(*port);
        })
        .expect("no free port in 20000-31999")
}

/// Where a child process runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Placement<'a> {
    /// Network namespace name.
    pub netns: Option<&'a str>,
    /// cgroup v2 directory to join before starting.
    pub cgroup: Option<&'a Path>,
    /// CPU to pin to.
    pub cpu: Option<usize>,
}

impl Placement<'_> {
    /// A command that runs `program` placed here (add its arguments); for
    /// one-shot runs whose output the test reads.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("sh");
        self.append_to_sh(&mut cmd, program);
        cmd
    }

    fn append_to(&self, cmd: &mut Command, program: impl AsRef<std::ffi::OsStr>) {
        cmd.arg("sh");
        self.append_to_sh(cmd, program);
    }

    /// `-c <script> sh <program>`: the script joins the cgroup, then `exec`s
    /// through taskset and `ip netns exec`, so the program keeps the PID.
    fn append_to_sh(&self, cmd: &mut Command, program: impl AsRef<std::ffi::OsStr>) {
        let mut script = String::new();
        if let Some(cg) = self.cgroup {
            script.push_str(&format!("echo $$ > '{}/cgroup.procs' && ", cg.display()));
        }
        script.push_str("exec ");
        if let Some(cpu) = self.cpu {
            script.push_str(&format!("taskset -c {cpu} "));
        }
        if let Some(ns) = self.netns {
            script.push_str(&format!("ip netns exec {ns} "));
        }
        script.push_str("\"$@\"");
        cmd.args(["-c", &script, "sh"]).arg(program);
    }
}

/// A child process killed (by PID) and reaped on drop, and killed by the
/// kernel if the test process dies first.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `program args…` with output to `log`.
    pub fn spawn(name: &str, program: &str, args: &[String], log: &Path) -> Self {
        Self::spawn_in(name, program, args, log, &Placement::default())
    }

    /// Starts `program args…` inside a network namespace and/or cgroup,
    /// optionally pinned to one CPU, with output to `log`. The process keeps
    /// its PID through the wrappers (each one `exec`s the next).
    pub fn spawn_in(name: &str, program: &str, args: &[String], log: &Path, place: &Placement<'_>) -> Self {
        let out = std::fs::File::create(log).expect("creating a log file");
        let err = out.try_clone().expect("cloning a log file handle");
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]);
        place.append_to(&mut cmd, program);
        let child = cmd
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    /// Waits for it to exit; its log and whether it succeeded.
    pub fn wait(&mut self) -> (bool, String) {
        let ok = self
            .child
            .take()
            .and_then(|mut c| c.wait().ok())
            .is_some_and(|s| s.success());
        (ok, std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The file its standard output and error go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Process ID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its warnings and errors and the last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("Error"))
            .take(20)
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ({}) ---\nproblems:\n{}\nlast lines:\n{}",
            self.name,
            self.log.display(),
            problems.join("\n"),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// Kills it (SIGKILL by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a TCP connection to `addr:port` succeeds from inside the
/// namespace named `netns`.
pub fn tcp_open(netns: &str, addr: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Wall-clock now, in seconds since the Unix epoch: how separate processes
/// (test, probes, components' logs) put their events on one time line.
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
