//! Traffic through the mesh: `knit-probe` servers and clients in pods,
//! nodes and hosts outside the mesh, and the answers they count.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::topology::{PodId, attach_underlay};
use super::{LocalMesh, SERVER_PORT};
use crate::netns::Netns;
use crate::process::{ChildProcess, Placement};

/// Answers counted by server name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Hits {
    /// Answers per server (`<cluster>/<pod>`).
    pub names: BTreeMap<String, usize>,
    /// Failed requests per error kind.
    pub errors: BTreeMap<String, usize>,
    /// Answers whose source was not the address asked for.
    pub peer_mismatch: usize,
}

impl Hits {
    /// Answers from servers of `cluster`.
    pub fn from_cluster(&self, cluster: &str) -> usize {
        self.names
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{cluster}/")))
            .map(|(_, c)| c)
            .sum()
    }

    /// Successful answers.
    pub fn total(&self) -> usize {
        self.names.values().sum()
    }
}

fn parse_hits(out: &[u8]) -> Hits {
    let out = String::from_utf8_lossy(out);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("knit-probe hits printed {out:?}: {e}"))
}

impl LocalMesh {
    pub(super) fn placement(&self, p: PodId, cpu: Option<usize>) -> Placement<'_> {
        let pod = self.pod(p);
        Placement {
            netns: Some(pod.netns.name()),
            cgroup: Some(&pod.cgroup),
            cpu,
        }
    }

    /// Runs `knit-probe args…` in pod `p` (its namespace and cgroup) and
    /// returns its standard output.
    pub fn probe(&self, p: PodId, args: &[&str]) -> String {
        self.probe_pinned(p, args, None)
    }

    /// Like [`LocalMesh::probe`], pinned to one CPU.
    pub fn probe_pinned(&self, p: PodId, args: &[&str], cpu: Option<usize>) -> String {
        let out = self
            .placement(p, cpu)
            .command(&self.bins.probe)
            .args(args)
            .output()
            .expect("running knit-probe");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `knit-probe args…` in pod `p` in the background.
    pub fn probe_background(&self, p: PodId, args: &[&str], tag: &str) -> ChildProcess {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        ChildProcess::spawn_in(
            tag,
            &self.bins.probe.to_string_lossy(),
            &args,
            &self.logs.path().join(format!("{tag}.log")),
            &self.placement(p, None),
        )
    }

    /// Starts a steady TCP client in pod `from`: connect, request, answer,
    /// close, every 20 ms, until the file `stop` appears. Read its count
    /// with [`assert_no_failures`].
    pub fn start_steady_client(
        &self,
        from: PodId,
        to: SocketAddrV4,
        stop: &std::path::Path,
        what: &str,
    ) -> SteadyClient {
        let (to, stop) = (to.to_string(), stop.to_string_lossy().into_owned());
        let process = self.probe_background(
            from,
            &[
                "crr",
                "--to",
                &to,
                "--seconds",
                "600",
                "--pause-ms",
                "20",
                "--stop-file",
                &stop,
            ],
            &format!("client-{}", what.replace(' ', "-")),
        );
        SteadyClient {
            process,
            what: what.to_owned(),
        }
    }

    /// `count` requests from pod `p` to `to:8080`, each on a new socket.
    pub fn hits(&self, p: PodId, to: Ipv4Addr, count: usize, udp: bool) -> Hits {
        self.hits_to(p, SocketAddrV4::new(to, SERVER_PORT), count, udp)
    }

    /// `count` requests from pod `p` to `to` (any port), each on a new
    /// socket.
    pub fn hits_to(&self, p: PodId, to: SocketAddrV4, count: usize, udp: bool) -> Hits {
        let (to, count) = (to.to_string(), count.to_string());
        let mut args = vec!["hits", "--to", &to, "--count", &count];
        if udp {
            args.push("--udp");
        }
        parse_hits(self.probe(p, &args).as_bytes())
    }

    /// One TCP request from pod `p` to `to` from local port `source_port`
    /// (the kernel may hand a port to one connection after another, to
    /// different addresses): whether it was answered, and by whom.
    pub fn hit_from_port(&self, p: PodId, to: SocketAddrV4, source_port: u16) -> Hits {
        let (to, port) = (to.to_string(), source_port.to_string());
        parse_hits(
            self.probe(p, &["hits", "--to", &to, "--count", "1", "--source-port", &port])
                .as_bytes(),
        )
    }

    /// Polls [`LocalMesh::hits`] (40 requests) until `ok` accepts the result.
    pub fn wait_for_hits(
        &self,
        what: &str,
        p: PodId,
        to: Ipv4Addr,
        udp: bool,
        mut ok: impl FnMut(&Hits) -> bool,
    ) -> Hits {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let h = self.hits(p, to, 40, udp);
            if ok(&h) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {h:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// How long until traffic from pod `p` to `vip` avoids every server
    /// of `gone` (names as `<cluster>/<pod>`): rounds of 10 requests every
    /// 100 ms until one round has only answers, none from `gone`. Returns
    /// the time and the requests that failed meanwhile.
    pub fn time_until_avoided(
        &self,
        p: PodId,
        vip: Ipv4Addr,
        gone: &[&str],
        timeout: Duration,
    ) -> (Duration, usize) {
        let start = Instant::now();
        let mut failed = 0;
        loop {
            let h = self.hits(p, vip, 10, false);
            failed += 10 - h.total();
            if h.total() == 10 && gone.iter().all(|g| !h.names.contains_key(*g)) {
                return (start.elapsed(), failed);
            }
            assert!(
                start.elapsed() < timeout,
                "traffic still reaches {gone:?} after {timeout:?}: {h:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `count` requests to `to` from the namespace `netns` (a node's: the
    /// host itself, outside any pod cgroup).
    pub fn hits_from(&self, netns: &str, to: SocketAddrV4, count: usize) -> Hits {
        let out = Placement {
            netns: Some(netns),
            ..Placement::default()
        }
        .command(&self.bins.probe)
        .args(["hits", "--to", &to.to_string(), "--count", &count.to_string()])
        .output()
        .expect("running knit-probe");
        parse_hits(&out.stdout)
    }

    /// The underlay namespace (for tests that add foreign hosts).
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// A host outside the mesh on the underlay (standing in for the
    /// internet): its own namespace with `ip`/24 on the bridge and a probe
    /// server named `outside/<tag>` on [`SERVER_PORT`]. Pods reach it only
    /// masqueraded: it has no route to any pod CIDR.
    pub fn add_outside_host(&self, tag: &str, ip: &str) -> (Netns, ChildProcess) {
        let ns = Netns::new(&format!("x-{tag}"));
        attach_underlay(
            &self.underlay,
            &ns,
            &format!("ux{tag}"),
            ip,
            self.options.underlay_mtu,
        );
        let server = self.serve_in(ns.name(), &format!("outside/{tag}"), SERVER_PORT);
        (ns, server)
    }

    /// Starts a probe server named `name` on `port` in the namespace
    /// `netns` (a node's, or a host's).
    pub fn serve_in(&self, netns: &str, name: &str, port: u16) -> ChildProcess {
        let args = vec![
            "serve".into(),
            "--name".into(),
            name.to_owned(),
            "--port".into(),
            port.to_string(),
        ];
        ChildProcess::spawn_in(
            &format!("server {name}"),
            &self.bins.probe.to_string_lossy(),
            &args,
            &self
                .logs
                .path()
                .join(format!("server-{}.log", name.replace('/', "-"))),
            &Placement {
                netns: Some(netns),
                ..Placement::default()
            },
        )
    }
}

/// A steady client started by [`LocalMesh::start_steady_client`].
pub struct SteadyClient {
    process: ChildProcess,
    what: String,
}

/// Waits for every client (after their stop file was written) and asserts
/// that none of their requests failed, and that each made more than
/// `min_ok`, enough to tell; `during` says when, for the messages. Returns
/// the requests that succeeded, per client.
pub fn assert_no_failures(
    mesh: &LocalMesh,
    clients: &mut [SteadyClient],
    min_ok: u64,
    during: &str,
) -> Vec<u64> {
    let mut oks = Vec::new();
    for client in clients {
        let (_, log) = client.process.wait();
        let report: serde_json::Value = log
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("{}: no report in {log:?}", client.what));
        let (ok, failed) = (report["ok"].as_u64().unwrap(), report["failed"].as_u64().unwrap());
        eprintln!("{}: {ok} ok, {failed} failed {during}", client.what);
        assert!(ok > min_ok, "{}: too few requests to tell: {report}", client.what);
        assert_eq!(
            failed,
            0,
            "{}: requests failed {during}: {report}\n{}",
            client.what,
            mesh.logs()
        );
        oks.push(ok);
    }
    oks
}
