//! Installing Knit into a real config directory, as the init container and
//! the agent do: chaining with a backup, the default conflist, the agent
//! putting Knit back after the cluster's CNI rewrote its file, uninstall.

use std::path::{Path, PathBuf};

use knit_cni::conflist::{self, DEFAULT_CONFLIST, Installed};
use serde_json::{Value, json};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("knit-conflist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn types(conf: &Value) -> Vec<String> {
    conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_owned())
        .collect()
}

fn kindnet() -> Value {
    json!({"cniVersion": "0.4.0", "name": "kindnet", "plugins": [
        {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]})
}

#[test]
fn chains_into_the_clusters_cni_keeps_it_chained_and_uninstall_restores_it() {
    let tmp = TempDir::new("chain");
    let state = tmp.0.join("state");
    let dir = tmp.0.join("net.d");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("10-kindnet.conflist");
    let original = serde_json::to_vec_pretty(&kindnet()).unwrap();
    std::fs::write(&file, &original).unwrap();

    assert_eq!(
        conflist::install(&dir, &[], &state).unwrap(),
        Installed::Chained(file.clone())
    );
    assert_eq!(types(&read(&file)), ["ptp", "portmap", "knit"]);
    assert_eq!(read(&file)["plugins"][2]["stateDir"], state.display().to_string());
    let backup = dir.join("10-kindnet.conflist.knit-backup");
    assert_eq!(std::fs::read(&backup).unwrap(), original);
    assert_eq!(
        conflist::install(&dir, &[], &state).unwrap(),
        Installed::AlreadyChained(file.clone()),
        "a second install changes nothing"
    );
    assert_eq!(conflist::keep_chained(&dir, &state).unwrap(), None);

    // kindnet restarts and writes its file again, with a new subnet.
    let mut rewritten = kindnet();
    rewritten["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.244.7.0/24"}]]);
    std::fs::write(&file, serde_json::to_vec(&rewritten).unwrap()).unwrap();
    assert_eq!(conflist::keep_chained(&dir, &state).unwrap(), Some(file.clone()));
    let now = read(&file);
    assert_eq!(types(&now), ["ptp", "portmap", "knit"]);
    assert_eq!(
        now["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.7.0/24",
        "the cluster's own change is kept"
    );
    assert_eq!(
        read(&backup),
        rewritten,
        "the backup follows the cluster's latest file"
    );

    let restored = conflist::uninstall(&dir).unwrap();
    assert_eq!(restored, vec![file.clone()]);
    assert_eq!(read(&file), rewritten);
    assert!(!backup.exists());
}

#[test]
fn writes_the_default_only_where_there_is_no_cni_and_removes_it_on_uninstall() {
    let tmp = TempDir::new("default");
    let state = tmp.0.join("state");
    let dir = tmp.0.join("net.d");

    let err = conflist::install(&dir, &[], &state).unwrap_err().to_string();
    assert!(err.contains("podCIDR"), "{err}");
    assert_eq!(
        conflist::keep_chained(&dir, &state).unwrap(),
        None,
        "nothing to join"
    );
    assert!(conflist::active_config(&dir).unwrap().is_none());

    let path = dir.join(DEFAULT_CONFLIST);
    assert_eq!(
        conflist::install(&dir, &["10.1.3.0/24".into()], &state).unwrap(),
        Installed::Default(path.clone())
    );
    assert_eq!(types(&read(&path)), ["ptp", "portmap", "knit"]);
    assert_eq!(conflist::keep_chained(&dir, &state).unwrap(), None);

    assert_eq!(conflist::uninstall(&dir).unwrap(), vec![path.clone()]);
    assert!(!path.exists());
}
