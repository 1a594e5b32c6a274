//! Installing Knit into copies of the CNI config directories real clusters
//! ship (`tests/fixtures`, one folder per CNI, with where each file lives),
//! then checking what a runtime would make of the result:
//! - every CNI config file still loads under libcni's rules (a `.conflist`
//!   needs a `name` and a non-empty `plugins` list of typed plugins; a
//!   `.conf` / `.json` is one typed plugin and may not hold a list);
//! - the file the runtime picks (the first by name) runs the cluster's
//!   plugins in their order, then Knit, at the cluster's own cniVersion;
//! - a second install changes nothing, and uninstall restores the
//!   directory byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use knit_cni::conflist::{self, Installed};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of fixture folder `name` as a node's config directory.
fn node_dir(name: &str) -> Dir {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("knit-real-configs-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(Path::new(FIXTURES).join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    Dir(dir)
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// libcni's checks when it loads `path` (`ConfFromBytes`,
/// `ConfListFromBytes`).
fn libcni_loads(path: &Path) -> Result<(), String> {
    let ext = path.extension().and_then(|e| e.to_str());
    if !matches!(ext, Some("conflist" | "conf" | "json")) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).map_err(|e| e.to_string())?;
    let typed = |p: &Value| p["type"].as_str().is_some_and(|t| !t.is_empty());
    if v.get("cniVersion").is_some_and(|version| !version.is_string()) {
        return Err("cniVersion is not a string".into());
    }
    match ext {
        Some("conflist") => {
            if v["name"].as_str().is_none_or(str::is_empty) {
                return Err("error parsing configuration list: no name".into());
            }
            let plugins = v["plugins"]
                .as_array()
                .ok_or("error parsing configuration list: no 'plugins' key")?;
            if plugins.is_empty() {
                return Err("error parsing configuration list: no plugins in list".into());
            }
            if !plugins.iter().all(typed) {
                return Err("a plugin has no type".into());
            }
            Ok(())
        }
        Some("conf" | "json") => {
            if !typed(&v) {
                return Err(
                    "error parsing configuration: missing 'type'; perhaps this is a .conflist?".into(),
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn plugin_types(list: &Value) -> Vec<String> {
    list["plugins"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["type"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The conflist the runtime (or Multus) runs for the pod network.
fn pod_network(dir: &Path) -> (PathBuf, Value) {
    let active = conflist::active_config(dir).unwrap().expect("a config");
    let conf = read(&active);
    if !conflist::is_multus(&conf) {
        return (active, conf);
    }
    if let Some(first) = conf["delegates"].as_array().and_then(|d| d.first()) {
        return (active, first.clone());
    }
    let pointer = conf["clusterNetwork"].as_str().unwrap();
    let file = dir.join(Path::new(pointer).file_name().unwrap());
    let target = read(&file);
    (file, target)
}

/// Installs into a copy of `fixture` and checks it as a runtime would:
/// `before` are the cluster's plugins in order, `version` its cniVersion.
fn round_trip(fixture: &str, before: &[&str], version: &str) -> Installed {
    let dir = node_dir(fixture);
    let state = dir.0.join("state-not-a-config");
    let original = snapshot(&dir.0);
    let installed = conflist::install(&dir.0, &[], &state).unwrap_or_else(|e| panic!("{fixture}: {e}"));

    for file in std::fs::read_dir(&dir.0).unwrap() {
        let path = file.unwrap().path();
        libcni_loads(&path).unwrap_or_else(|e| panic!("{fixture}: {} does not load: {e}", path.display()));
    }
    let (path, network) = pod_network(&dir.0);
    let mut want: Vec<String> = before.iter().map(|s| (*s).to_owned()).collect();
    want.push("knit".into());
    assert_eq!(plugin_types(&network), want, "{fixture}: {}", path.display());
    assert_eq!(
        network["cniVersion"], version,
        "{fixture}: the cluster's own version"
    );

    let again = conflist::install(&dir.0, &[], &state).unwrap();
    assert!(
        matches!(again, Installed::AlreadyChained(_)),
        "{fixture}: {again:?}"
    );
    assert_eq!(conflist::keep_chained(&dir.0, &state).unwrap(), None, "{fixture}");

    conflist::uninstall(&dir.0).unwrap();
    assert_eq!(
        snapshot(&dir.0),
        original,
        "{fixture}: uninstall restores every byte"
    );
    installed
}

#[test]
fn conflists_are_appended_to_in_place() {
    for (fixture, before, version) in [
        ("kindnet", &["ptp", "portmap"][..], "0.3.1"),
        ("flannel", &["flannel", "portmap"][..], "0.3.1"),
        ("k3s", &["flannel", "portmap", "bandwidth"][..], "1.0.0"),
        ("calico", &["calico", "portmap", "bandwidth"][..], "0.3.1"),
        ("cilium", &["cilium-cni"][..], "0.3.1"),
        ("aws-vpc-cni", &["aws-cni", "egress-cni", "portmap"][..], "1.0.0"),
        ("containerd", &["bridge", "portmap"][..], "1.0.0"),
    ] {
        let installed = round_trip(fixture, before, version);
        let Installed::Chained(path) = installed else {
            panic!("{fixture}: {installed:?}")
        };
        assert_eq!(path.extension().unwrap(), "conflist", "{fixture}");
    }
}

#[test]
fn single_plugin_confs_become_a_conflist_of_the_same_name() {
    for (fixture, plugin, version, name) in [
        ("cilium-conf", "cilium-cni", "0.3.1", "05-cilium.conflist"),
        ("bridge-040", "bridge", "0.4.0", "10-mynet.conflist"),
    ] {
        let installed = round_trip(fixture, &[plugin], version);
        let Installed::Chained(path) = installed else {
            panic!("{fixture}: {installed:?}")
        };
        assert_eq!(path.file_name().unwrap(), name, "{fixture}");
    }
    // disableCheck stays a list-level field.
    let dir = node_dir("bridge-040");
    let conf = dir.0.join("10-mynet.conf");
    let mut v = read(&conf);
    v["disableCheck"] = true.into();
    std::fs::write(&conf, v.to_string()).unwrap();
    conflist::install(&dir.0, &[], &dir.0.join("s")).unwrap();
    let list = read(&dir.0.join("10-mynet.conflist"));
    assert_eq!(list["disableCheck"], true);
    assert!(list["plugins"][0].get("disableCheck").is_none());
}

#[test]
fn multus_keeps_its_file_and_knit_joins_the_cluster_network_it_delegates_to() {
    // Thin: inline delegates; Multus's own file is rewritten.
    let installed = round_trip("multus-thin", &["flannel", "portmap"], "0.3.1");
    assert!(
        matches!(&installed, Installed::Chained(p) if p.ends_with("00-multus.conf")),
        "{installed:?}"
    );

    // Thick: clusterNetwork by the path Multus's container sees; the
    // conflist it points at is chained, Multus's file is untouched.
    let installed = round_trip("multus-thick", &["calico", "portmap", "bandwidth"], "0.3.1");
    assert!(
        matches!(&installed, Installed::Chained(p) if p.ends_with("10-calico.conflist")),
        "{installed:?}"
    );
    let dir = node_dir("multus-thick");
    let multus = std::fs::read(dir.0.join("00-multus.conf")).unwrap();
    conflist::install(&dir.0, &[], &dir.0.join("s")).unwrap();
    assert_eq!(std::fs::read(dir.0.join("00-multus.conf")).unwrap(), multus);
}

#[test]
fn multus_pointing_at_a_single_plugin_conf_follows_it_to_the_conflist() {
    let dir = node_dir("cilium-conf");
    let multus = r#"{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim","clusterNetwork":"/host/etc/cni/net.d/05-cilium.conf"}"#;
    std::fs::write(dir.0.join("00-multus.conf"), multus).unwrap();
    let original = snapshot(&dir.0);
    conflist::install(&dir.0, &[], &dir.0.join("s")).unwrap();
    let now = read(&dir.0.join("00-multus.conf"));
    assert_eq!(now["clusterNetwork"], "/host/etc/cni/net.d/05-cilium.conflist");
    assert_eq!(
        plugin_types(&read(&dir.0.join("05-cilium.conflist"))),
        ["cilium-cni", "knit"]
    );
    for file in std::fs::read_dir(&dir.0).unwrap() {
        libcni_loads(&file.unwrap().path()).unwrap();
    }
    assert!(matches!(
        conflist::install(&dir.0, &[], &dir.0.join("s")).unwrap(),
        Installed::AlreadyChained(_)
    ));
    conflist::uninstall(&dir.0).unwrap();
    assert_eq!(snapshot(&dir.0), original);

    // By network name, and a name nobody has: a clear error.
    std::fs::write(
        dir.0.join("00-multus.conf"),
        r#"{"cniVersion":"0.3.1","name":"m","type":"multus","clusterNetwork":"nad-elsewhere"}"#,
    )
    .unwrap();
    let e = conflist::install(&dir.0, &[], &dir.0.join("s"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nad-elsewhere") && e.contains("clusterNetwork"), "{e}");
}

#[test]
fn a_cluster_cni_rewriting_its_conf_is_chained_again() {
    let dir = node_dir("cilium-conf");
    let state = dir.0.join("s");
    conflist::install(&dir.0, &[], &state).unwrap();
    // Cilium restarts and writes its .conf again: it sorts before our
    // .conflist, so the runtime would pick it.
    let fresh = std::fs::read(Path::new(FIXTURES).join("cilium-conf/05-cilium.conf")).unwrap();
    std::fs::write(dir.0.join("05-cilium.conf"), &fresh).unwrap();
    let again = conflist::keep_chained(&dir.0, &state).unwrap();
    assert_eq!(again, Some(dir.0.join("05-cilium.conflist")));
    assert!(!dir.0.join("05-cilium.conf").exists());
    conflist::uninstall(&dir.0).unwrap();
    assert_eq!(std::fs::read(dir.0.join("05-cilium.conf")).unwrap(), fresh);
    assert!(!dir.0.join("05-cilium.conflist").exists());
}
