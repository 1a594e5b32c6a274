//! A mesh left behind by a killed run is removed at the next start.

use std::process::Command;

use knit_e2e::netns::{clean_stale, sh};

#[test]
fn leftovers_of_a_dead_run_are_removed() {
    let mut child = Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    let ns = format!("knit-{dead}-a-cp");
    sh("ip", &["netns", "add", &ns]);
    let tmp = std::env::temp_dir().join(format!("knit-cluster-cluster-a-{dead}-0"));
    std::fs::create_dir_all(tmp.join("pki")).expect("temp dir");
    let mine = format!("knit-{}-keep", std::process::id());
    sh("ip", &["netns", "add", &mine]);

    clean_stale();

    let list = String::from_utf8_lossy(&sh("ip", &["netns", "list"]).stdout).into_owned();
    let _ = Command::new("ip").args(["netns", "del", &mine]).output();
    assert!(!list.contains(&ns), "stale namespace survived: {list}");
    assert!(list.contains(&mine), "a live run's namespace was removed: {list}");
    assert!(!tmp.exists(), "stale temporary directory survived");
}
