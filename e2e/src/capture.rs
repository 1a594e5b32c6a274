//! Packet captures on the test's own interfaces, for checks of what crosses
//! the underlay (e.g. that encryption leaves no plaintext).
//!
//! [`Capture::start`] runs tcpdump inside a namespace and returns once it
//! captures. [`Capture::stop`] stops it only after a sentinel datagram, sent
//! after everything the test sent, is in the file, so nothing the test
//! sent is cut off. [`Capture::contains`] and [`Capture::packets`] read
//! the file.

use std::net::UdpSocket;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

const SENTINEL: &str = "KNIT-CAPTURE-SENTINEL";

/// Runs `f` on a thread inside network namespace `netns` (by name); what it
/// makes there (sockets, devices, their threads) stays in that namespace.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A running tcpdump and its file.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    /// Captures every packet of `dev` in namespace `netns` into `file`.
    pub fn start(netns: &Netns, dev: &str, file: &Path) -> Self {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns.name(),
                "tcpdump",
                "-i",
                dev,
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (scripts/setup.sh installs it)");
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            let n = std::io::BufRead::read_line(&mut stderr, &mut line).expect("tcpdump's stderr");
            assert!(n > 0, "tcpdump stopped before capturing");
        }
        Self {
            child: Some(child),
            file: file.to_owned(),
        }
    }

    /// Stops once a sentinel datagram from namespace `from` to `to` (UDP
    /// port 9, across the captured interface) is in the file.
    pub fn stop(mut self, from: &str, to: &str) -> Self {
        let socket = in_netns(from, || UdpSocket::bind("0.0.0.0:0").expect("bind"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.contains(SENTINEL) {
            assert!(Instant::now() < deadline, "the capture never saw its sentinel");
            socket.send_to(SENTINEL.as_bytes(), (to, 9)).expect("send");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        self
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Whether any captured byte sequence is `marker`.
    pub fn contains(&self, marker: &str) -> bool {
        let bytes = std::fs::read(&self.file).unwrap_or_default();
        bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
    }

    /// Captured packets that match the pcap `filter`.
    pub fn packets(&self, filter: &str) -> usize {
        let out = Command::new("tcpdump")
            .arg("-nr")
            .arg(&self.file)
            .args(filter.split(' '))
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}
