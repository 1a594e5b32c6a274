//! The release images, built without a container engine by
//! `scripts/build-images.py` (what `make images` runs), really run: each
//! is imported into Debian's containerd and started by runc. Every
//! component answers `--version` inside its image, the images say who they
//! run as and what they are (user, entrypoint, OCI labels, platform), and
//! the agent image's `install-cni` puts Knit on a node (a host directory
//! bound in, as the DaemonSet's hostPath volumes do). Runs as root.

use std::path::Path;
use std::process::Command;

use knit_e2e::TempDir;
use knit_e2e::container::{Containerd, NodeCni, OciImage};
use knit_e2e::mesh::Binaries;
use knit_e2e::netns::Netns;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The image config of the layout at `layout`.
fn image_config(layout: &Path) -> (serde_json::Value, serde_json::Value) {
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = json(&layout.join("index.json"));
    let entry = index["manifests"][0].clone();
    let manifest = json(&blob(entry["digest"].as_str().unwrap()));
    (entry, json(&blob(manifest["config"]["digest"].as_str().unwrap())))
}

#[test]
fn the_release_images_run_in_containerd() {
    let bins = Binaries::locate();
    let dir = TempDir::new("images");
    let out = dir.path().join("images");
    let build = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/build-images.py"))
        .arg(format!("--bin-dir={}", bins.agent.parent().unwrap().display()))
        .arg(format!("--out={}", out.display()))
        .arg("--version=v0.0.0-test")
        .output()
        .expect("build-images.py");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let ns = Netns::new("images");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let runtime = Containerd::start(
        &dir.path().join("runtime"),
        &NodeCni {
            netns: ns.name(),
            conflist: &serde_json::json!({"cniVersion": "1.0.0", "name": "none", "plugins": []}),
            bin_dir: &plugins,
        },
    );
    let version = env!("CARGO_PKG_VERSION");
    for (image, user) in [
        ("knit-operator", "65532:65532"),
        ("knit-apiserver", "65532:65532"),
        ("knit-agent", "0:0"),
        ("knit-probe", "65532:65532"),
    ] {
        let layout = out.join(image);
        let (entry, config) = image_config(&layout);
        assert_eq!(entry["platform"]["os"], "linux");
        assert_eq!(config["config"]["User"], user, "{image}");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{image}")])
        );
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], image);
        assert_eq!(labels["org.opencontainers.image.version"], "v0.0.0-test");
        let reference = format!("ghcr.io/knit-dev/{image}:v0.0.0-test");
        runtime.import(&OciImage {
            reference: reference.clone(),
            archive: out.join(format!("{image}.tar")),
        });
        let run = runtime.run_to_completion(
            &reference,
            &format!("{image}-version"),
            &[],
            &[&format!("/usr/local/bin/{image}"), "--version"],
        );
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success() && stdout.trim() == format!("{image} {version}"),
            "{image} --version in its image: {stdout}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        eprintln!("{reference}: {}", stdout.trim());
    }

    // install-cni from the agent image onto an empty node.
    let host = dir.path().join("host");
    let (conf, bin) = (host.join("etc/cni/net.d"), host.join("opt/cni/bin"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let run = runtime.run_to_completion(
        "ghcr.io/knit-dev/knit-agent:v0.0.0-test",
        "install-cni",
        &[(&conf, "/host/etc/cni/net.d"), (&bin, "/host/opt/cni/bin")],
        &[
            "/usr/local/bin/knit-agent",
            "install-cni",
            "--conf-dir=/host/etc/cni/net.d",
            "--bin-dir=/host/opt/cni/bin",
            "--pod-cidr=10.1.1.0/24",
            "--pod-mtu=1450",
        ],
    );
    assert!(
        run.status.success(),
        "install-cni in the agent image: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut installed: Vec<String> = std::fs::read_dir(&bin)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    installed.sort();
    assert_eq!(installed, ["host-local", "knit", "loopback", "portmap", "ptp"]);
    let conflist = std::fs::read_dir(&conf)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "conflist"))
        .expect("a conflist");
    let conflist = json(&conflist);
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ptp", "portmap", "knit"], "{conflist}");
}
