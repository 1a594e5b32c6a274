//! knit-cni runs on the host, out of the node's plugin directory, next to
//! whatever glibc the node has (or none). It is built the way the image
//! builds it (`cargo rustc … -C target-feature=+crt-static`, into a target
//! directory of its own), then checked: `ldd` finds no dynamic dependency,
//! and the static binary answers VERSION and attaches a Calico-shaped pod
//! for real, reading the pod's interface through `setns` + `getifaddrs`
//! in network namespaces this test makes. Runs as root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn build_static() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = workspace().join("target/static");
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "rustc",
            "-q",
            "-p",
            "knit-cni",
            "--bin",
            "knit-cni",
            "--target-dir",
        ])
        .arg(&target_dir)
        .args(["--", "-C", "target-feature=+crt-static"])
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "static build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("debug/knit-cni")
}

fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace of this test, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Self {
        let name = format!("knit-static-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        Self(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(bin: &Path, ns: &Ns, env: &[(&str, &str)], stdin: &str) -> (bool, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(bin)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("knit-cni");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_host_binary_is_static_and_attaches_a_calico_shaped_pod() {
    let bin = build_static();
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "knit-cni must have no dynamic dependencies; ldd says: {said}"
    );

    let node = Ns::new("node");
    let pod = Ns::new("pod");
    let (ok, version) = run(&bin, &node, &[("CNI_COMMAND", "VERSION")], "");
    assert!(ok, "{version}");
    let version: Value = serde_json::from_str(&version).unwrap();
    assert!(
        version["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("0.3.1"))
    );

    // What Calico makes: a veth whose host side is cali…, the pod side
    // eth0 with a /32, and a result naming only the host side.
    sh(&[
        "ip",
        "-n",
        &node.0,
        "link",
        "add",
        "cali0123456789a",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pod.0,
    ]);
    sh(&["ip", "-n", &pod.0, "addr", "add", "10.77.9.5/32", "dev", "eth0"]);
    sh(&["ip", "-n", &pod.0, "link", "set", "eth0", "up"]);
    let mac = |ns: &Ns, dev: &str| {
        let out = sh(&["ip", "-n", &ns.0, "-j", "link", "show", "dev", dev]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    };
    let state = std::env::temp_dir().join(format!("knit-static-state-{}", std::process::id()));
    let conf = json!({"cniVersion": "0.3.1", "name": "k8s-pod-network", "type": "knit", "stateDir": state,
        "prevResult": {"cniVersion": "0.3.1", "interfaces": [{"name": "cali0123456789a"}],
            "ips": [{"version": "4", "address": "10.77.9.5/32"}], "dns": {}}});
    // Playing the agent: the attachment is marked attached, so ADD returns.
    knit_cni::attachment::AttachmentStore::new(&state)
        .mark_attached("calico1", "eth0")
        .unwrap();
    let netns = format!("/run/netns/{}", pod.0);
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "calico1"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let (ok, result) = run(&bin, &node, &env, &conf.to_string());
    let record = std::fs::read_to_string(state.join("attachments/calico1_eth0.json"));
    let _ = std::fs::remove_dir_all(&state);
    assert!(ok, "ADD: {result}");
    let result: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["cniVersion"], "0.3.1");
    let record: Value = serde_json::from_str(&record.expect("the attachment record")).unwrap();
    assert_eq!(record["hostInterface"], "cali0123456789a");
    assert_eq!(
        record["podMac"],
        mac(&pod, "eth0"),
        "the pod's MAC, read inside CNI_NETNS"
    );
    assert_eq!(record["hostMac"], mac(&node, "cali0123456789a"));
    assert_eq!(record["ips"], json!(["10.77.9.5"]));
}
