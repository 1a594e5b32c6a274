//! A real container runtime on a node of the local mesh: Debian's
//! `containerd` and `runc`, driven with `ctr`, creating a pod from an image
//! built here (no registry), its network made by `ctr run --cni` through the
//! node's conflist, exactly as on a node without Kubernetes.
//!
//! Isolation: containerd runs in the node's network namespace and in a
//! private mount namespace of its own, where `/etc`, `/opt`, `/var/lib` and
//! `/run` are shadowed by tmpfs directories that link back to the real
//! entries. Only in that view do `/etc/cni/net.d` (the node's conflist),
//! `/opt/cni/bin` (the node's plugins), `/var/lib/cni` (libcni's result
//! cache) and `/run/containerd` exist, so nothing is written to the
//! machine's CNI or containerd directories. Its root, state and socket live
//! in the test's directory; containers go to a cgroup path unique to the
//! test, removed on drop from every hierarchy runc created it in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::ChildProcess;

/// containerd namespace of the test's containers.
pub const NAMESPACE: &str = "knit-e2e";

/// An OCI image archive (`ctr images import` format) built from local files.
#[derive(Clone, Debug)]
pub struct OciImage {
    /// Reference the image is imported under.
    pub reference: String,
    /// The archive: `oci-layout`, `index.json`, `blobs/sha256/…`.
    pub archive: PathBuf,
}

/// Builds a one-layer image holding `binary` at `/<file name>` with the
/// shared libraries it links (as `ldd` reports them), entrypoint that
/// binary. Everything is written below `dir`.
pub fn build_image(dir: &Path, reference: &str, binary: &Path) -> OciImage {
    let rootfs = dir.join("rootfs");
    let name = binary.file_name().expect("a binary file name");
    std::fs::create_dir_all(&rootfs).expect("rootfs");
    std::fs::copy(binary, rootfs.join(name)).expect("copying the binary into the rootfs");
    for lib in linked_libraries(binary) {
        let dst = rootfs.join(lib.strip_prefix("/").expect("absolute library path"));
        std::fs::create_dir_all(dst.parent().expect("a parent")).expect("library directory");
        std::fs::copy(&lib, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", lib.display()));
    }
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blob directory");
    let layer_tar = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer_tar)
        .arg("."));
    let layer = add_blob(&blobs, &std::fs::read(&layer_tar).expect("layer"));
    let entrypoint = format!("/{}", name.to_string_lossy());
    let config = add_blob(
        &blobs,
        &serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.0]},
            "config": {"Entrypoint": [entrypoint]},
        }))
        .expect("JSON"),
    );
    let manifest = add_blob(
        &blobs,
        &serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
        }))
        .expect("JSON"),
    );
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.0,
            "size": manifest.1,
            "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": "test"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let archive = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    OciImage {
        reference: reference.to_owned(),
        archive,
    }
}

fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = run(Command::new("ldd").arg(binary));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// Stores `data` as a blob; returns its digest and size.
fn add_blob(blobs: &Path, data: &[u8]) -> (String, usize) {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(blobs.join(&hex), data).expect("writing a blob");
    (format!("sha256:{hex}"), data.len())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A containerd daemon serving one node of the mesh.
pub struct Containerd {
    dir: PathBuf,
    daemon: ChildProcess,
    cgroup_parent: String,
}

/// Where the node's CNI lives, as the runtime should see it.
pub struct NodeCni<'a> {
    /// The node's network namespace name.
    pub netns: &'a str,
    /// The conflist the runtime uses (written to `/etc/cni/net.d`).
    pub conflist: &'a Value,
    /// The plugin directory (seen as `/opt/cni/bin`).
    pub bin_dir: &'a Path,
}

impl Containerd {
    /// Starts containerd for the node `cni` describes, with its files
    /// below `dir`.
    pub fn start(dir: &Path, cni: &NodeCni<'_>) -> Self {
        for d in ["root", "state", "net.d", "shadow"] {
            std::fs::create_dir_all(dir.join(d)).expect("containerd directory");
        }
        std::fs::write(
            dir.join("net.d/10-knit.conflist"),
            serde_json::to_vec_pretty(cni.conflist).expect("JSON"),
        )
        .expect("conflist");
        let d = dir.display();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{d}/containerd.sock\"\n"
            ),
        )
        .expect("containerd config");
        let script = format!(
            "set -e\n\
             mount --make-rprivate /\n\
             shadow() {{\n\
               orig=\"{d}/shadow$1\"; mkdir -p \"$orig\"; mount --bind \"$1\" \"$orig\"; mount -t tmpfs knit-e2e \"$1\"\n\
               for e in \"$orig\"/* \"$orig\"/.[!.]*; do if [ -e \"$e\" ] || [ -L \"$e\" ]; then ln -s \"$e\" \"$1/\"; fi; done\n\
             }}\n\
             for d in /etc /opt /var/lib /run; do shadow $d; done\n\
             rm -f /etc/cni /opt/cni /var/lib/cni /run/containerd\n\
             mkdir -p /etc/cni /opt/cni /var/lib/cni /run/containerd\n\
             ln -s {d}/net.d /etc/cni/net.d\n\
             ln -s {bin} /opt/cni/bin\n\
             exec containerd -c {d}/config.toml\n",
            bin = cni.bin_dir.display()
        );
        let daemon = ChildProcess::spawn(
            "containerd",
            "nsenter",
            &[
                format!("--net=/run/netns/{}", cni.netns),
                "unshare".into(),
                "--mount".into(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                "-c".into(),
                script,
            ],
            &dir.join("containerd.log"),
        );
        let cgroup_parent = format!("knit-e2e-ctr-{}", std::process::id());
        let runtime = Self {
            dir: dir.to_owned(),
            daemon,
            cgroup_parent,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !runtime.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                runtime.daemon.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        runtime
    }

    fn ctr_command(&self) -> Command {
        let pid = self.daemon.pid().expect("containerd is running");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={pid}"))
            .args(["--mount", "--net", "ctr", "--address"])
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", NAMESPACE]);
        cmd
    }

    /// Runs `ctr args…` against this daemon, in its namespaces.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command().args(args).output().expect("running ctr")
    }

    /// Imports an image archive.
    pub fn import(&self, image: &OciImage) {
        let out = self.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "native",
            &image.archive.to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ctr run --cni --rm` of `image` as container `id` with the command
    /// `args` (ctr replaces the image's entrypoint with it), in
    /// the background: ctr creates the container and its network namespace,
    /// runs CNI ADD through the conflist, waits for the task to exit, then
    /// runs CNI DEL and removes the container.
    pub fn run(&self, image: &OciImage, id: &str, args: &[&str]) -> ChildProcess {
        let cmd = self.ctr_command();
        let mut all: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        all.extend(
            [
                "run",
                "--cni",
                "--rm",
                "--null-io",
                "--snapshotter",
                "native",
                "--cgroup",
            ]
            .map(String::from),
        );
        all.push(format!("/{}/{id}", self.cgroup_parent));
        all.push(image.reference.clone());
        all.push(id.to_owned());
        all.extend(args.iter().map(|a| a.to_string()));
        ChildProcess::spawn(
            &format!("ctr run {id}"),
            "nsenter",
            &all,
            &self.dir.join(format!("ctr-run-{id}.log")),
        )
    }

    /// `ctr run --rm` of image `reference` as container `id`, without a
    /// network (loopback only) and with host directories bound at the given
    /// container paths, the command `args` replacing the entrypoint when
    /// given; waits for it to exit and returns its output.
    pub fn run_to_completion(
        &self,
        reference: &str,
        id: &str,
        binds: &[(&Path, &str)],
        args: &[&str],
    ) -> Output {
        let mut cmd = self.ctr_command();
        cmd.args(["run", "--rm", "--snapshotter", "native", "--cgroup"])
            .arg(format!("/{}/{id}", self.cgroup_parent));
        for (src, dst) in binds {
            cmd.arg("--mount").arg(format!(
                "type=bind,src={},dst={dst},options=rbind:rw",
                src.display()
            ));
        }
        cmd.arg(reference).arg(id).args(args);
        cmd.output().expect("running ctr run")
    }

    /// Kills container `id`'s task (SIGKILL: the workload is PID 1 there and
    /// ignores SIGTERM without a handler, as a runtime's grace period ends).
    pub fn kill(&self, id: &str) -> Output {
        self.ctr(&["task", "kill", "--signal", "SIGKILL", id])
    }

    /// The runtime's containers (`ctr containers list -q`).
    pub fn containers(&self) -> Vec<String> {
        let out = self.ctr(&["containers", "list", "--quiet"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The CNI container ID ctr gives container `id` (`<namespace>-<id>`).
    pub fn cni_container_id(id: &str) -> String {
        format!("{NAMESPACE}-{id}")
    }

    fn shim_pids(&self) -> Vec<u32> {
        let tasks = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(NAMESPACE);
        std::fs::read_dir(tasks)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("shim.pid")).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.containers() {
            let _ = self.kill(&id);
            let _ = self.ctr(&["task", "delete", "--force", &id]);
            let _ = self.ctr(&["containers", "delete", &id]);
        }
        let shims = self.shim_pids();
        self.daemon.stop();
        for pid in shims {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
        }
        // runc made the test's cgroup path in every hierarchy it manages.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let parent = hierarchy.path().join(&self.cgroup_parent);
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.cgroup_parent));
    }
}
