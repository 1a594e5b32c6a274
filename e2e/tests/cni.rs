//! knit-cni through the real CNI protocol: the binary run by this test
//! playing the runtime, after Debian's reference `ptp` + `host-local`, in
//! network namespaces the test made. Every CNI command, and every error a
//! runtime can provoke, with its code. A thread plays the agent's side of
//! the hand-over (marking attachments attached). Runs as root.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use knit_cni::attachment::AttachmentStore;
use knit_e2e::TempDir;
use knit_e2e::cni::{CniRuntime, Sandbox, result_ipv4};
use knit_e2e::mesh::Binaries;
use knit_e2e::netns::Netns;
use serde_json::{Value, json};

struct Node {
    ns: Netns,
    pods: Vec<Netns>,
    cni: CniRuntime,
    store: AttachmentStore,
    _dir: TempDir,
}

fn node() -> Node {
    let bins = Binaries::locate();
    let dir = TempDir::new("cni-node");
    let ns = Netns::new("cni-node");
    let state = dir.path().join("state");
    CniRuntime::link_plugins(&dir.path().join("bin"), &bins.cni);
    let cni = CniRuntime {
        conflist: knit_cni::conflist::default_conflist(
            &["10.77.1.0/24".into()],
            &state,
            Some(&dir.path().join("ipam")),
            None,
        ),
        bin_dir: dir.path().join("bin"),
        cache_dir: dir.path().join("cache"),
        node_netns: ns.name().to_owned(),
    };
    Node {
        ns,
        pods: Vec::new(),
        cni,
        store: AttachmentStore::new(state),
        _dir: dir,
    }
}

impl Node {
    fn sandbox(&mut self, tag: &str) -> Sandbox {
        let pod = Netns::new(&format!("cni-{tag}"));
        let sb = Sandbox::in_netns(tag, &pod, "shop", tag);
        self.pods.push(pod);
        sb
    }

    fn knit(&self) -> Value {
        self.cni.conflist["plugins"][2].clone()
    }

    fn link_mac(&self, netns: &str, dev: &str) -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", netns, "-j", "link", "show", "dev", dev])
            .output()
            .expect("ip link");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([{}]));
        v[0]["address"].as_str().unwrap_or_default().to_owned()
    }
}

/// Marks every recorded attachment attached, as the agent does once the
/// pod's datapath is in, until dropped.
struct FakeAgent(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl FakeAgent {
    fn start(store: &AttachmentStore) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, store) = (stop.clone(), AttachmentStore::new(store.root()));
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let (all, _) = store.list().unwrap();
                store.sync_attached(&all).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Self(stop, Some(thread))
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

fn code(r: Result<String, knit_e2e::cni::CniFailure>) -> u64 {
    let e = r.expect_err("the call must fail");
    assert!(e.output.contains("\"msg\""), "CNI error JSON: {}", e.output);
    e.code.unwrap_or_else(|| panic!("no code in {}", e.output))
}

#[test]
fn every_command_through_the_protocol() {
    let mut node = node();
    let knit = node.knit();

    // VERSION.
    let v: Value = serde_json::from_str(&node.cni.exec(&knit, "VERSION", None, &[]).unwrap()).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0"))
    );

    // Without an agent, ADD fails closed: "try again later", and the
    // chain's DEL (as a runtime runs it after a failed ADD) cleans up.
    let early = node.sandbox("early");
    let mut impatient = node.cni.conflist.clone();
    impatient["plugins"][2]["attachTimeoutSeconds"] = json!(1);
    let runtime = CniRuntime {
        conflist: impatient,
        ..node.cni.clone()
    };
    let e = runtime.add(&early).expect_err("ADD without an agent");
    assert_eq!(e.code, Some(11), "{}", e.output);
    assert!(e.output.contains("never started"), "{}", e.output);
    assert!(node.store.get(&early.container_id, "eth0").unwrap().is_none());
    runtime.del(&early).expect("DEL after the failed ADD");

    // ADD through ptp + host-local + portmap + knit: the attachment names
    // the veth ptp made and the MACs the kernel has.
    let _agent = FakeAgent::start(&node.store);
    let sb = node.sandbox("p1");
    let result = node.cni.add(&sb).expect("ADD");
    let ip = result_ipv4(&result).expect("an address");
    let recorded = node
        .store
        .get(&sb.container_id, "eth0")
        .unwrap()
        .expect("recorded");
    assert_eq!(recorded.ips, vec![std::net::IpAddr::V4(ip)]);
    assert_eq!(recorded.pod_namespace.as_deref(), Some("shop"));
    assert_eq!(recorded.pod_name.as_deref(), Some("p1"));
    assert_eq!(recorded.netns, sb.netns.to_string_lossy());
    let pod_ns = node.pods[1].name().to_owned();
    assert_eq!(
        recorded.pod_mac.as_deref(),
        Some(node.link_mac(&pod_ns, "eth0").as_str())
    );
    assert_eq!(
        recorded.host_mac.as_deref(),
        Some(node.link_mac(node.ns.name(), &recorded.host_interface).as_str()),
        "the host side of the veth, in the node's namespace"
    );
    assert_eq!(
        result["interfaces"][0]["name"], recorded.host_interface,
        "result passed through"
    );

    // CHECK: the cached result matches; a lost record is reported.
    node.cni.check(&sb).expect("CHECK of a healthy pod");
    let mut stale = node.cni.cached(&sb).unwrap();
    stale["ips"][0]["address"] = json!("10.77.1.200/24");
    let e = node
        .cni
        .exec(&knit, "CHECK", Some(&sb), &[("prevResult", stale)])
        .expect_err("CHECK with another address");
    assert_eq!(e.code, Some(100), "{}", e.output);

    // Errors a runtime can provoke, each with its code and a message.
    assert_eq!(
        code(node.cni.exec(&knit, "ADD", Some(&sb), &[])),
        7,
        "ADD without prevResult"
    );
    let mut bad = sb.clone();
    bad.container_id = "../etc".into();
    let prev = node.cni.cached(&sb).unwrap();
    assert_eq!(
        code(
            node.cni
                .exec(&knit, "ADD", Some(&bad), &[("prevResult", prev.clone())])
        ),
        4,
        "a container ID that is not a file name"
    );
    assert_eq!(
        code(node.cni.exec(
            &knit,
            "ADD",
            Some(&sb),
            &[("prevResult", prev), ("cniVersion", json!("0.2.0"))]
        )),
        1,
        "an unsupported version"
    );
    assert_eq!(code(node.cni.exec(&knit, "FROB", Some(&sb), &[])), 4);

    // STATUS (a 1.1 command): not available until the agent marks the
    // datapath ready.
    let v11 = [("cniVersion", json!("1.1.0"))];
    assert_eq!(code(node.cni.exec(&knit, "STATUS", None, &v11)), 50);
    node.store.mark_datapath_ready().unwrap();
    node.cni
        .exec(&knit, "STATUS", None, &v11)
        .expect("STATUS once ready");
    assert_eq!(
        code(node.cni.exec(&knit, "STATUS", None, &[])),
        1,
        "STATUS needs 1.1.0"
    );

    // GC keeps the attachments the runtime still has and forgets the rest.
    let sb2 = node.sandbox("p2");
    node.cni.add(&sb2).expect("ADD of a second pod");
    assert_eq!(node.store.list().unwrap().0.len(), 2);
    let valid = json!([{"containerID": sb.container_id, "ifname": "eth0"}]);
    node.cni
        .exec(
            &knit,
            "GC",
            None,
            &[
                ("cniVersion", json!("1.1.0")),
                ("cni.dev/valid-attachments", valid),
            ],
        )
        .expect("GC");
    let left: Vec<String> = node
        .store
        .list()
        .unwrap()
        .0
        .into_iter()
        .map(|a| a.container_id)
        .collect();
    assert_eq!(left, vec![sb.container_id.clone()]);

    // DEL through the whole chain, twice: the second finds nothing and
    // still succeeds; DEL of a pod that never existed succeeds too.
    node.cni.del(&sb).expect("DEL");
    assert!(node.store.get(&sb.container_id, "eth0").unwrap().is_none());
    node.cni.del(&sb).expect("DEL again");
    let never = node.sandbox("never");
    node.cni.del(&never).expect("DEL of an unknown pod");
}
