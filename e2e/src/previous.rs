//! The previous release's binaries, for the version-skew and upgrade tests:
//! a git worktree of [`PREVIOUS`] under `target/previous/`, built into its
//! own target directory once and reused by later runs (a build is a few
//! minutes on two cores; the result only changes with the pinned commit).
//!
//! Knit has no tagged release yet; the pin is the last commit of the
//! previous stop (the state a cluster would run before this one's
//! changes). Once `v0.1.0` is tagged, the pin moves to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::mesh::Binaries;

/// The commit the previous release is built from.
pub const PREVIOUS: &str = "b33603343dcff9a47e8e90863bd1e0093963089c";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binaries of [`PREVIOUS`], built on first use.
pub fn previous_binaries() -> Binaries {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let root = workspace_root();
    let base = root.join("target/previous").join(&PREVIOUS[..12]);
    let (src, target) = (base.join("src"), base.join("target"));
    let profile = target.join("debug");
    let built = base.join("built");
    if built.exists() {
        return Binaries::in_dir(&profile);
    }
    if !src.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&src);
        run(
            "git worktree prune",
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["worktree", "prune"]),
        );
        run(
            &format!("checking out {PREVIOUS} (is this a full clone?)"),
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["worktree", "add", "--force", "--detach"])
                .arg(&src)
                .arg(PREVIOUS),
        );
    }
    eprintln!(
        "building the previous release ({PREVIOUS}) into {}",
        target.display()
    );
    run(
        "building the previous release",
        Command::new(env!("CARGO"))
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--locked", "--workspace", "--bins"]),
    );
    std::fs::write(&built, PREVIOUS).expect("marking the build done");
    Binaries::in_dir(&profile)
}
