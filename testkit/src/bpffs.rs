//! A bpffs instance of a test's own, so pinned maps and links never touch
//! the host's `/sys/fs/bpf` (which may not even be mounted) and all go at
//! once when the test ends.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A bpffs mounted at a directory of the test's; unmounted on drop, which
/// frees every map and link pinned in it.
#[derive(Debug)]
pub struct BpffsRoot {
    mount: PathBuf,
}

impl BpffsRoot {
    /// Mounts a fresh bpffs at `mount` (created if missing; kept if a bpffs
    /// is mounted there already). Needs root.
    pub fn mount(mount: PathBuf) -> Self {
        std::fs::create_dir_all(&mount).expect("bpffs mount point");
        if !is_bpffs(&mount) {
            let out = Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&mount)
                .output()
                .expect("running mount");
            assert!(
                out.status.success(),
                "mounting bpffs at {} failed (run as root): {}",
                mount.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self { mount }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for BpffsRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.mount);
        // A child another test thread is forking may hold a descriptor of
        // this mount for a moment (EBUSY): detach it lazily then, so no
        // mount outlives the test.
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .output()
            .is_ok_and(|o| o.status.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        }
        let _ = std::fs::remove_dir(&self.mount);
    }
}

fn is_bpffs(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(1) == Some(&&*path.to_string_lossy()) && f.get(2) == Some(&"bpf")
        })
    })
}
