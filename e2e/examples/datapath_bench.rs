//! `make bench` part 3: pod → VIP → pod through three setups, at growing
//! numbers of services.
//!
//! - (a) direct: the client connects to the server pod's IP;
//! - (b) knit: the client connects to a Service VIP; the node runs the knit
//!   datapath (socket-level LB, tc programs) with N services in its maps;
//! - (c) iptables: the same VIP on a node without knit, translated by
//!   kube-proxy-style DNAT rules (one KUBE-SERVICES match and one KUBE-SVC
//!   chain per service; the measured service sits in the middle, the
//!   average position);
//! - (d) nftables: the same node with the rules kube-proxy's nftables mode
//!   writes: one verdict map from (VIP, protocol, port) to a chain per
//!   service, which picks an endpoint chain by `numgen` and DNATs there.
//!
//! - (e) nftables with each service chain jumping straight to its one
//!   endpoint: at 10,000 and 100,000 services.
//!
//! IPVS is not measured: the kernel here has no `IP_VS`. kube-proxy's
//! nftables form is measured up to 10,000 services: each service's
//! anonymous verdict map makes a load grow with the square of N (2,000:
//! 0.47 s, 4,000: 1.9 s, 10,000: about 10 s), so 100,000 would take about
//! 20 minutes; (e) stands in for it there, with a shorter packet path than
//! kube-proxy's, so knit's ratio to it is a lower bound. Besides the rates, the time to program
//! each datapath (knit's map writes, `iptables-restore`, `nft -f`) is
//! printed, and the time for one service change to take effect with N
//! services loaded (knit: the agent's patch; iptables: the service's chain
//! restored with `--noflush`, as kube-proxy does; nftables: one
//! transaction rewriting its endpoint chain).
//!
//! Client and server are knit-probe processes in pod namespaces made by the
//! CNI (the reference `ptp` + `host-local`, then `knit-cni` on the knit
//! node), pinned to CPU 0 and CPU 1, with TIME_WAIT reuse on in the client. `crr`: a new TCP connection per request; `rr`:
//! request/response on one connection. The knit node's maps are written by
//! this program playing the agent's datapath writer (the same
//! `knit_agent::datapath` code), so N can reach 100,000 without a control
//! plane in the loop.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use knit_agent::datapath::Datapath;
use knit_agent::datapath::patch::StatePatch;
use knit_agent::datapath::state::{DatapathState, Frontend, Link, LocalEndpoint, PROTO_TCP, Route};
use knit_agent::datapath::tc::TcAttach;
use knit_agent::netdev::{NetDevices, VXLAN_PORT};
use knit_agent::render::parse_mac;
use knit_cni::attachment::AttachmentStore;
use knit_e2e::cni::{CniRuntime, Sandbox, result_ipv4};
use knit_e2e::mesh::{Binaries, SERVER_PORT};
use knit_e2e::netns::{CgroupRoot, Netns, clean_stale};
use knit_e2e::{ChildProcess, Placement, TempDir};

/// The bench node's pod CIDR (host-local hands out addresses from it).
const POD_CIDR: &str = "10.1.1.0/24";
const SECONDS: &str = "2";
/// Connection-rate runs per figure (the median is reported; direct and VIP
/// runs alternate so both see the same machine noise, and the ratio to
/// direct is the median of each pair's ratio, so drift between pairs
/// cancels).
const RUNS: usize = 5;

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32)
}

fn measured(n: usize) -> Ipv4Addr {
    vip(n / 2)
}

/// Inside the knit node's namespace: load the datapath, attach the pods
/// knit-cni recorded in `state_dir` and write `n` services to `server`,
/// then stay up until killed (the maps stay pinned either way).
fn datapath_node(pin_dir: PathBuf, cgroup: PathBuf, n: usize, state_dir: PathBuf, server: Ipv4Addr) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let net = NetDevices::connect().expect("netlink");
        let tunnel = net.ensure_vxlan("knit_vxlan", VXLAN_PORT).await.expect("vxlan");
        let mut dp =
            Datapath::start(&pin_dir, TcAttach::Auto, "knit_vxlan", tunnel, Some(&cgroup)).expect("datapath");
        let mut state = DatapathState::default();
        let (attachments, _) = AttachmentStore::new(state_dir).list().expect("attachments");
        for a in &attachments {
            let std::net::IpAddr::V4(ip) = a.ips[0] else {
                continue;
            };
            state.endpoints.insert(
                ip,
                LocalEndpoint {
                    interface: a.host_interface.clone(),
                    mac: a.pod_mac.as_deref().and_then(parse_mac),
                    node_mac: a.host_mac.as_deref().and_then(parse_mac),
                    identity: 100,
                    policy_enforced: false,
                    egress_enforced: false,
                },
            );
            state.routes.insert(
                Ipv4Net::new(ip, 32).expect("prefix"),
                Route {
                    identity: 100,
                    tunnel: None,
                },
            );
        }
        for i in 0..n {
            state.services.insert(
                Frontend {
                    vip: vip(i),
                    port: SERVER_PORT,
                    proto: PROTO_TCP,
                },
                vec![SocketAddrV4::new(server, SERVER_PORT)],
            );
        }
        let interfaces: HashMap<String, Link> = net.interfaces().await.expect("interfaces");
        let t = Instant::now();
        let (report, _) = dp.apply(&state, &interfaces).expect("apply");
        println!("ready: {report:?} in {:?}", t.elapsed());
        // One service changes (its backend listed twice: same traffic), as
        // the agent writes a service record's change: a patch.
        let changed = Frontend {
            vip: vip(0),
            port: SERVER_PORT,
            proto: PROTO_TCP,
        };
        let backend = SocketAddrV4::new(server, SERVER_PORT);
        let patch = StatePatch {
            routes: Vec::new(),
            services: vec![(changed, Some(vec![backend, backend]))],
        };
        let t = Instant::now();
        let report = dp.apply_patch(&patch);
        println!("changed: {report:?} in {:?}", t.elapsed());
        std::future::pending::<()>().await;
    });
}

struct Node {
    ns: Netns,
    client: Netns,
    _server: Netns,
    client_cg: PathBuf,
    _server_proc: ChildProcess,
    server_ip: Ipv4Addr,
    state_dir: PathBuf,
}

/// A pod namespace attached by the node's CNI; returns its IP.
fn cni_pod(cni: &CniRuntime, pod: &Netns, name: &str) -> Ipv4Addr {
    let sandbox = Sandbox::in_netns(name, pod, "bench", name);
    // No agent runs here (the bench loads the datapath itself once the
    // pods exist): mark the attachment attached, as the agent would, so
    // knit-cni's ADD returns.
    let state = cni.conflist["plugins"][2]["stateDir"]
        .as_str()
        .expect("knit's stateDir in the bench conflist");
    AttachmentStore::new(state)
        .mark_attached(&sandbox.container_id, &sandbox.ifname)
        .expect("marker");
    let result = cni.add(&sandbox).unwrap_or_else(|e| panic!("{e}"));
    result_ipv4(&result).expect("an IPv4 address")
}

fn node(tag: &str, cgroups: &CgroupRoot, bins: &Binaries, logs: &TempDir, knit: bool) -> Node {
    let ns = Netns::new(&format!("bench-{tag}"));
    let client = Netns::new(&format!("bench-{tag}-client"));
    let server = Netns::new(&format!("bench-{tag}-server"));
    let dir = logs.path().join(format!("cni-{tag}"));
    let state_dir = dir.join("state");
    CniRuntime::link_plugins(&dir.join("bin"), &bins.cni);
    let mut conflist = knit_cni::conflist::default_conflist(
        &[POD_CIDR.to_owned()],
        &state_dir,
        Some(&dir.join("ipam")),
        None,
    );
    if !knit {
        // The plain node: the same reference plugins without Knit.
        conflist["plugins"].as_array_mut().expect("plugins").pop();
    }
    let cni = CniRuntime {
        conflist,
        bin_dir: dir.join("bin"),
        cache_dir: dir.join("cache"),
        node_netns: ns.name().to_owned(),
    };
    cni_pod(&cni, &client, "client");
    // Tens of thousands of short connections per figure: let TIME_WAIT
    // ports be reused, as every connection-rate benchmark does, or the
    // second figure measures ephemeral port exhaustion instead.
    client.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65000",
        ],
    );
    let server_ip = cni_pod(&cni, &server, "server");
    let client_cg = cgroups.dir(&format!("{tag}/client"));
    let server_cg = cgroups.dir(&format!("{tag}/server"));
    let server_proc = ChildProcess::spawn_in(
        &format!("{tag} server"),
        &bins.probe.to_string_lossy(),
        &[
            "serve".into(),
            "--name".into(),
            "server".into(),
            "--port".into(),
            SERVER_PORT.to_string(),
        ],
        &logs.path().join(format!("{tag}-server.log")),
        &Placement {
            netns: Some(server.name()),
            cgroup: Some(&server_cg),
            cpu: Some(1),
        },
    );
    Node {
        ns,
        client,
        _server: server,
        client_cg,
        _server_proc: server_proc,
        server_ip,
        state_dir,
    }
}

fn probe(bins: &Binaries, n: &Node, mode: &str, to: Ipv4Addr) -> serde_json::Value {
    let out = Placement {
        netns: Some(n.client.name()),
        cgroup: Some(&n.client_cg),
        cpu: Some(0),
    }
    .command(&bins.probe)
    .args([mode, "--to", &format!("{to}:{SERVER_PORT}"), "--seconds", SECONDS])
    .output()
    .expect("knit-probe");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "knit-probe {mode} to {to}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[derive(Default, Clone, Copy)]
struct Figures {
    crr: f64,
    /// Median of the ratios to the direct run paired with each run.
    vs_direct: f64,
    /// The lowest and highest of those ratios.
    pair_range: (f64, f64),
    failed: u64,
    p50: f64,
    p99: f64,
}

/// Connection rate and failed connections of one run.
fn crr(bins: &Binaries, n: &Node, to: Ipv4Addr) -> (f64, u64) {
    let c = probe(bins, n, "crr", to);
    let (ok, failed) = (c["ok"].as_f64().unwrap_or(0.0), c["failed"].as_u64().unwrap_or(0));
    assert!(
        (failed as f64) <= ok / 100.0,
        "more than 1% failed connections to {to}: {c}"
    );
    (c["connections_per_sec"].as_f64().unwrap_or(0.0), failed)
}

fn rr(bins: &Binaries, n: &Node, to: Ipv4Addr, f: &mut Figures) {
    let r = probe(bins, n, "rr", to);
    f.p50 = r["p50_us"].as_f64().unwrap_or(0.0);
    f.p99 = r["p99_us"].as_f64().unwrap_or(0.0);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Direct and VIP figures on one node, runs interleaved.
fn measure_pair(bins: &Binaries, n: &Node, vip: Ipv4Addr) -> (Figures, Figures) {
    let (mut d, mut v) = (Vec::new(), Vec::new());
    let (mut direct, mut via) = (Figures::default(), Figures::default());
    for _ in 0..RUNS {
        let (rate, failed) = crr(bins, n, n.server_ip);
        d.push(rate);
        direct.failed += failed;
        let (rate, failed) = crr(bins, n, vip);
        v.push(rate);
        via.failed += failed;
    }
    direct.vs_direct = 1.0;
    let ratios: Vec<f64> = v.iter().zip(&d).map(|(v, d)| v / d).collect();
    via.pair_range = ratios
        .iter()
        .fold((f64::INFINITY, 0.0), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    via.vs_direct = median(ratios);
    direct.crr = median(d);
    via.crr = median(v);
    rr(bins, n, n.server_ip, &mut direct);
    rr(bins, n, vip, &mut via);
    (direct, via)
}

fn iptables_rules(n: usize, server: Ipv4Addr) -> String {
    let mut s = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    for i in 0..n {
        s.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n"));
    }
    s.push_str("-A PREROUTING -j KUBE-SERVICES\n");
    for i in 0..n {
        s.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport {SERVER_PORT} -j KUBE-SVC-{i}\n",
            vip(i)
        ));
        s.push_str(&format!(
            "-A KUBE-SVC-{i} -p tcp -j DNAT --to-destination {server}:{SERVER_PORT}\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

/// Which nftables rules a run loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NftForm {
    /// kube-proxy's nftables mode: a chain per service picks an endpoint
    /// chain through `numgen` and an anonymous verdict map.
    KubeProxy,
    /// The same, but a service chain jumps straight to its one endpoint:
    /// no anonymous map per service, whose allocation makes a load grow
    /// with the square of the number of services (2,000: 0.47 s, 4,000:
    /// 1.9 s here), and a shorter packet path.
    GotoEndpoint,
}

impl NftForm {
    fn setup(self) -> &'static str {
        match self {
            NftForm::KubeProxy => "d nftables vmap",
            NftForm::GotoEndpoint => "e nftables vmap, goto",
        }
    }

    fn direct_setup(self) -> &'static str {
        match self {
            NftForm::KubeProxy => "a direct (nftables node)",
            NftForm::GotoEndpoint => "a direct (nft goto node)",
        }
    }

    fn tool(self) -> &'static str {
        match self {
            NftForm::KubeProxy => "nft -f",
            NftForm::GotoEndpoint => "nft -f, goto",
        }
    }
}

/// kube-proxy's nftables mode, reduced to what the packet path meets: the
/// `service-ips` verdict map, a chain per service choosing an endpoint
/// (see [`NftForm`]), and a chain per endpoint that DNATs. The file
/// replaces any earlier `kube-proxy` table in one transaction.
fn nft_rules(n: usize, server: Ipv4Addr, form: NftForm) -> String {
    let mut s = String::from("add table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {\n");
    s.push_str(
        "  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {\n",
    );
    for i in 0..n {
        let sep = if i + 1 == n { "" } else { "," };
        s.push_str(&format!(
            "      {} . tcp . {SERVER_PORT} : goto service-{i}{sep}\n",
            vip(i)
        ));
    }
    s.push_str("    }\n  }\n");
    s.push_str("  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n");
    s.push_str("  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n");
    for i in 0..n {
        let pick = match form {
            NftForm::KubeProxy => format!("numgen random mod 1 vmap {{ 0 : goto endpoint-{i} }}"),
            NftForm::GotoEndpoint => format!("goto endpoint-{i}"),
        };
        s.push_str(&format!(
            "  chain service-{i} {{\n    {pick}\n  }}\n  chain endpoint-{i} {{\n    meta l4proto tcp dnat to {server}:{SERVER_PORT}\n  }}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// Connections per second and request/response p99 against the number of
/// services, a line per setup, as `target/bench/datapath.svg` (under
/// `CARGO_TARGET_DIR` when set); returns the path.
fn write_chart(rows: &BTreeMap<(usize, &str), Figures>) -> PathBuf {
    use knit_e2e::chart::{Chart, Series};
    let setups: std::collections::BTreeSet<&str> = rows.keys().map(|(_, s)| *s).collect();
    let series = |figure: fn(&Figures) -> f64| -> Vec<Series> {
        setups
            .iter()
            .map(|setup| Series {
                // Without the ordering letter ("b knit VIP").
                name: setup.get(2..).unwrap_or(setup).to_owned(),
                points: rows
                    .iter()
                    .filter(|((_, s), _)| s == setup)
                    .map(|((n, _), f)| (*n as f64, figure(f)))
                    .collect(),
            })
            .collect()
    };
    let charts = [
        Chart {
            title: format!(
                "pod -> VIP -> pod: connections per second (median of {RUNS} runs of {SECONDS} s)"
            ),
            x_label: "services (log scale)".into(),
            y_label: "conn/s".into(),
            series: series(|f| f.crr),
        },
        Chart {
            title: "request/response latency on one connection: p99".into(),
            x_label: "services (log scale)".into(),
            y_label: "p99 (us)".into(),
            series: series(|f| f.p99),
        },
    ];
    let dir =
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("bench");
    std::fs::create_dir_all(&dir).expect("chart directory");
    let path = dir.join("datapath.svg");
    knit_e2e::chart::write_svg(&path, &charts).unwrap_or_else(|e| panic!("chart: {e}"));
    path
}

/// The `in …` duration the datapath node printed on its line starting
/// with `tag` (`ready:` after writing its maps, `changed:` after one
/// service change).
fn printed_in(log: &str, tag: &str) -> Option<Duration> {
    let text = log.lines().find(|l| l.starts_with(tag))?;
    let d = text.rsplit(" in ").next()?.trim();
    let (value, unit) = d.split_at(d.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?);
    let value: f64 = value.parse().ok()?;
    let secs = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--datapath-node") {
        datapath_node(
            args[2].clone().into(),
            args[3].clone().into(),
            args[4].parse().expect("n"),
            args[5].clone().into(),
            args[6].parse().expect("server address"),
        );
        return;
    }
    clean_stale();
    let bins = Binaries::locate();
    let cgroups = CgroupRoot::new();
    let bpffs = knit_e2e::netns::run_bpffs();
    let logs = TempDir::new("bench-logs");
    let sizes = [1usize, 1_000, 10_000, 100_000];
    let mut rows: BTreeMap<(usize, &str), Figures> = BTreeMap::new();

    let mut programming: BTreeMap<(&str, usize), Duration> = BTreeMap::new();
    let mut one_change: BTreeMap<(&str, usize), Duration> = BTreeMap::new();
    // knit and iptables at every size, nftables five times (below).
    let mut progress = knit_e2e::progress::Progress::new("datapath", sizes.len() * 2 + 5);
    let knit = node("k", &cgroups, &bins, &logs, true);
    let node_cg = cgroups.dir("k");
    let pin_dir = bpffs.path().join("k");
    for &n in &sizes {
        progress.step(&format!(
            "knit with {n} services: load the maps, then direct and VIP, {RUNS} runs each"
        ));
        let log = logs.path().join(format!("datapath-{n}.log"));
        let me = std::env::current_exe().expect("exe");
        let mut dp = ChildProcess::spawn_in(
            "datapath",
            &me.to_string_lossy(),
            &[
                "--datapath-node".into(),
                pin_dir.to_string_lossy().into_owned(),
                node_cg.to_string_lossy().into_owned(),
                n.to_string(),
                knit.state_dir.to_string_lossy().into_owned(),
                knit.server_ip.to_string(),
            ],
            &log,
            &Placement {
                netns: Some(knit.ns.name()),
                ..Placement::default()
            },
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("changed:")
        {
            assert!(
                dp.is_running() && Instant::now() < deadline,
                "datapath did not start\n{}",
                dp.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let ready = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("knit, {n} services: {}", ready.trim());
        if let Some(d) = printed_in(&ready, "ready:") {
            programming.insert(("knit map writes", n), d);
        }
        if let Some(d) = printed_in(&ready, "changed:") {
            one_change.insert(("knit map writes", n), d);
        }
        let (direct, via) = measure_pair(&bins, &knit, measured(n));
        rows.insert((n, "a direct (knit node)"), direct);
        rows.insert((n, "b knit VIP"), via);
        dp.stop();
        // The next size starts from empty maps, so its programming time
        // counts every entry.
        std::fs::remove_dir_all(&pin_dir).expect("removing the bench's pins");
    }
    drop(knit);

    let plain = node("i", &cgroups, &bins, &logs, false);
    for &n in &sizes {
        progress.step(&format!(
            "iptables with {n} services: load the rules, then direct and DNAT, {RUNS} runs each"
        ));
        let file = logs.path().join(format!("rules-{n}"));
        std::fs::write(&file, iptables_rules(n, plain.server_ip)).expect("rules");
        let t = Instant::now();
        plain.ns.exec("iptables-restore", &[&file.to_string_lossy()]);
        programming.insert(("iptables-restore", n), t.elapsed());
        eprintln!("iptables, {n} services: rules loaded in {:?}", t.elapsed());
        // One service changes as kube-proxy writes it: its chain alone,
        // without flushing the table.
        let change = logs.path().join(format!("rules-change-{n}"));
        let to = format!("{}:{SERVER_PORT}", plain.server_ip);
        std::fs::write(
            &change,
            format!("*nat\n:KUBE-SVC-0 - [0:0]\n-A KUBE-SVC-0 -p tcp -j DNAT --to-destination {to}\n-A KUBE-SVC-0 -p tcp -j DNAT --to-destination {to}\nCOMMIT\n"),
        )
        .expect("rules");
        let t = Instant::now();
        plain
            .ns
            .exec("iptables-restore", &["--noflush", &change.to_string_lossy()]);
        one_change.insert(("iptables-restore", n), t.elapsed());
        let (direct, via) = measure_pair(&bins, &plain, measured(n));
        rows.insert((n, "a direct (iptables node)"), direct);
        rows.insert((n, "c iptables DNAT"), via);
    }
    // The iptables rules go, the nftables ones come (both are nf_tables
    // underneath; each setup is measured alone).
    plain.ns.exec("iptables", &["-t", "nat", "-F"]);
    plain.ns.exec("iptables", &["-t", "nat", "-X"]);
    // kube-proxy's form up to 10,000 services; at 100,000 its load takes
    // about 20 minutes here (below), so the service chains jump straight to
    // their one endpoint instead: a shorter packet path than kube-proxy's,
    // measured at 10,000 too to show the difference.
    let nft_runs = [
        (sizes[0], NftForm::KubeProxy),
        (sizes[1], NftForm::KubeProxy),
        (sizes[2], NftForm::KubeProxy),
        (sizes[2], NftForm::GotoEndpoint),
        (sizes[3], NftForm::GotoEndpoint),
    ];
    for (n, form) in nft_runs {
        progress.step(&format!(
            "nftables ({}) with {n} services: load the rules, then direct and DNAT, {RUNS} runs each",
            form.setup()
        ));
        let file = logs.path().join(format!("nft-{n}"));
        std::fs::write(&file, nft_rules(n, plain.server_ip, form)).expect("rules");
        let t = Instant::now();
        plain.ns.exec("nft", &["-f", &file.to_string_lossy()]);
        programming.insert((form.tool(), n), t.elapsed());
        eprintln!("nftables, {n} services: rules loaded in {:?}", t.elapsed());
        // One service changes as kube-proxy's nftables mode writes it: one
        // transaction rewriting its endpoint chain.
        let change = logs.path().join(format!("nft-change-{n}"));
        std::fs::write(
            &change,
            format!("flush chain ip kube-proxy endpoint-0\nadd rule ip kube-proxy endpoint-0 meta l4proto tcp dnat to {}:{SERVER_PORT}\n", plain.server_ip),
        )
        .expect("rules");
        let t = Instant::now();
        plain.ns.exec("nft", &["-f", &change.to_string_lossy()]);
        one_change.insert((form.tool(), n), t.elapsed());
        let (direct, via) = measure_pair(&bins, &plain, measured(n));
        rows.insert((n, form.direct_setup()), direct);
        rows.insert((n, form.setup()), via);
    }
    drop(plain);

    println!(
        "\nknit's tc programs attached with {} (--tc-attach=auto on this kernel)",
        TcAttach::Auto
            .resolve()
            .map(|m| m.to_string())
            .unwrap_or_else(|e| e.to_string())
    );
    println!(
        "\npod -> VIP -> pod (client on CPU 0, server on CPU 1; conn/s: median of {RUNS} runs of {SECONDS} s, direct and VIP interleaved)"
    );
    println!(
        "(vs direct: against the pod IP on the same node with the same rules loaded, the median of each interleaved pair's ratio; kube-proxy's rules slow direct traffic too)"
    );
    println!(
        "{:<10} {:<25} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "services", "setup", "conn/s", "failed", "rr p50 us", "rr p99 us", "vs direct"
    );
    for ((n, setup), f) in &rows {
        println!(
            "{:<10} {:<25} {:>10.0} {:>8} {:>10.1} {:>10.1} {:>9.2}x",
            n, setup, f.crr, f.failed, f.p50, f.p99, f.vs_direct
        );
    }
    let k1 = rows[&(1, "b knit VIP")].crr;
    let k100k = rows[&(100_000, "b knit VIP")].crr;
    let k10k = rows[&(10_000, "b knit VIP")].crr;
    let i10k = rows[&(10_000, "c iptables DNAT")].crr;
    let i100k = rows[&(100_000, "c iptables DNAT")].crr;
    println!("knit 100,000 vs 1 service: {:.2}x conn/s", k100k / k1);
    let worst = sizes
        .iter()
        .map(|n| rows[&(*n, "b knit VIP")])
        .min_by(|a, b| a.vs_direct.total_cmp(&b.vs_direct))
        .expect("sizes");
    println!(
        "knit VIP / direct at the worst size: {:.2}x conn/s (target: 0.95x or more; its {RUNS} pairs ranged {:.2}x to {:.2}x)",
        worst.vs_direct, worst.pair_range.0, worst.pair_range.1
    );
    println!("knit / iptables at 10,000 services: {:.2}x conn/s", k10k / i10k);
    println!(
        "knit / iptables at 100,000 services: {:.2}x conn/s",
        k100k / i100k
    );
    let n10k = rows[&(10_000, "d nftables vmap")].crr;
    println!("knit / nftables at 10,000 services: {:.2}x conn/s", k10k / n10k);
    let g10k = rows[&(10_000, NftForm::GotoEndpoint.setup())].crr;
    let g100k = rows[&(100_000, NftForm::GotoEndpoint.setup())].crr;
    println!(
        "knit / nftables with goto (shorter than kube-proxy's path) at 10,000 services: {:.2}x conn/s; at 100,000: {:.2}x",
        k10k / g10k,
        k100k / g100k
    );
    println!(
        "nftables in kube-proxy's form at 100,000 services: not measured; its load grows with the square of N (anonymous maps), about 20 minutes here"
    );
    println!("IPVS: not measured (the kernel here has no IP_VS)");

    let chart = write_chart(&rows);
    println!("chart: {}", chart.display());

    println!("\ntime to program N services into each datapath");
    println!(
        "{:<18} {:>12} {:>12} {:>12} {:>12}",
        "datapath", "1", "1,000", "10,000", "100,000"
    );
    print_times(&programming, |d| format!("{:.3} s", d.as_secs_f64()));
    println!(
        "\ntime for one service change to take effect, N services loaded (knit: a patch; iptables: its chain with --noflush; nftables: one transaction)"
    );
    println!(
        "{:<18} {:>12} {:>12} {:>12} {:>12}",
        "datapath", "1", "1,000", "10,000", "100,000"
    );
    print_times(&one_change, |d| format!("{:.3} ms", d.as_secs_f64() * 1e3));
}

/// One row per datapath of `times`, by number of services.
fn print_times(times: &BTreeMap<(&str, usize), Duration>, show: impl Fn(Duration) -> String) {
    for datapath in ["knit map writes", "iptables-restore", "nft -f", "nft -f, goto"] {
        let cell = |n: usize| {
            times
                .get(&(datapath, n))
                .map_or("not measured".to_owned(), |d| show(*d))
        };
        println!(
            "{:<18} {:>12} {:>12} {:>12} {:>12}",
            datapath,
            cell(1),
            cell(1_000),
            cell(10_000),
            cell(100_000)
        );
    }
}
