//! The container runtime's side of CNI, as the local mesh plays it: runs a
//! node's conflist through the real plugins exactly as containerd's and
//! CRI-O's libcni do.
//!
//! - ADD runs the plugins in order, each getting the previous one's result
//!   as `prevResult`; the final result is cached per attachment.
//! - DEL runs them in reverse order with the cached result (none when it is
//!   gone), and forgets the cache; CHECK runs them in order with it.
//! - STATUS and GC run every plugin (GC with `cni.dev/valid-attachments`).
//!
//! Plugins run inside the node's network namespace; the plugin directory,
//! host-local's `dataDir`, Knit's state directory and the result cache all
//! live in the test's temporary directories, never under `/etc/cni`,
//! `/opt/cni` or `/var/lib/cni` of the machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::process::Placement;

/// Where Debian's `containernetworking-plugins` installs the reference
/// plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A failed CNI call: the plugin, the command and its error JSON.
#[derive(Clone, Debug)]
pub struct CniFailure {
    /// Plugin type.
    pub plugin: String,
    /// CNI command.
    pub command: String,
    /// Error code, when the plugin printed CNI error JSON.
    pub code: Option<u64>,
    /// What the plugin printed.
    pub output: String,
}

impl std::fmt::Display for CniFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CNI {} of {} failed: {}",
            self.command, self.plugin, self.output
        )
    }
}

/// One pod sandbox as the runtime knows it.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// Container (sandbox) ID.
    pub container_id: String,
    /// Path of the pod's network namespace.
    pub netns: PathBuf,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes name.
    pub name: String,
}

impl Sandbox {
    /// The sandbox of the pod namespace `pod`, interface `eth0`, with a
    /// container ID made of this test run's prefix and `tag`.
    pub fn in_netns(tag: &str, pod: &crate::netns::Netns, namespace: &str, name: &str) -> Self {
        Self {
            container_id: format!("{}{tag}", crate::netns::run_prefix()),
            netns: PathBuf::from("/run/netns").join(pod.name()),
            ifname: "eth0".into(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// A node's CNI setup.
#[derive(Clone, Debug)]
pub struct CniRuntime {
    /// The conflist (`name`, `cniVersion`, `plugins`).
    pub conflist: Value,
    /// `CNI_PATH`: where plugin binaries are found.
    pub bin_dir: PathBuf,
    /// Cached results.
    pub cache_dir: PathBuf,
    /// Network namespace the plugins run in (the node's).
    pub node_netns: String,
}

impl CniRuntime {
    /// Plugin directory `bin_dir` made of the reference plugins,
    /// `knit-cni` (as `knit`) and the stand-in `calico`
    /// (`e2e/cni-standins`), by symlink.
    pub fn link_plugins(bin_dir: &Path, knit_cni: &Path) {
        std::fs::create_dir_all(bin_dir).expect("plugin directory");
        for p in ["ptp", "bridge", "host-local", "portmap", "loopback", "bandwidth"] {
            let src = Path::new(REFERENCE_PLUGINS).join(p);
            assert!(
                src.exists(),
                "{} is missing: install containernetworking-plugins (make setup)",
                src.display()
            );
            let _ = std::os::unix::fs::symlink(&src, bin_dir.join(p));
        }
        let _ = std::os::unix::fs::symlink(knit_cni, bin_dir.join("knit"));
        // Stand-ins for plugins that cannot be installed here, making
        // interfaces and results the way the real ones do.
        let standins = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-standins");
        let _ = std::os::unix::fs::symlink(standins.join("calico"), bin_dir.join("calico"));
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"].as_array().cloned().unwrap_or_default()
    }

    fn cache_file(&self, sb: &Sandbox) -> PathBuf {
        let net = self.conflist["name"].as_str().unwrap_or("net");
        self.cache_dir
            .join(format!("{net}-{}-{}.json", sb.container_id, sb.ifname))
    }

    /// Runs one plugin; `Ok` is its stdout.
    pub fn exec(
        &self,
        plugin: &Value,
        command: &str,
        sb: Option<&Sandbox>,
        extra: &[(&str, Value)],
    ) -> Result<String, CniFailure> {
        let ty = plugin["type"].as_str().unwrap_or_default().to_owned();
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        for (k, v) in extra {
            conf[*k] = v.clone();
        }
        let mut cmd = Placement {
            netns: Some(&self.node_netns),
            ..Placement::default()
        }
        .command(self.bin_dir.join(&ty));
        cmd.env("CNI_COMMAND", command)
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(sb) = sb {
            cmd.env("CNI_CONTAINERID", &sb.container_id)
                .env("CNI_NETNS", &sb.netns)
                .env("CNI_IFNAME", &sb.ifname)
                .env(
                    "CNI_ARGS",
                    format!(
                        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                        sb.namespace, sb.name, sb.container_id
                    ),
                );
        }
        let mut child = cmd.spawn().expect("starting a CNI plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("writing the network config");
        let out = child.wait_with_output().expect("running a CNI plugin");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let code = serde_json::from_str::<Value>(&stdout)
            .ok()
            .and_then(|v| v["code"].as_u64());
        Err(CniFailure {
            plugin: ty,
            command: command.into(),
            code,
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        })
    }

    /// ADD: every plugin in order; returns (and caches) the final result.
    pub fn add(&self, sb: &Sandbox) -> Result<Value, CniFailure> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let extra: Vec<(&str, Value)> = prev.iter().map(|p| ("prevResult", p.clone())).collect();
            let out = self.exec(&plugin, "ADD", Some(sb), &extra)?;
            prev = Some(serde_json::from_str(&out).map_err(|e| CniFailure {
                plugin: plugin["type"].as_str().unwrap_or_default().into(),
                command: "ADD".into(),
                code: None,
                output: format!("result is not JSON ({e}): {out}"),
            })?);
        }
        let result = prev.unwrap_or(json!({}));
        std::fs::create_dir_all(&self.cache_dir).expect("cache directory");
        std::fs::write(self.cache_file(sb), result.to_string()).expect("caching a CNI result");
        Ok(result)
    }

    /// The cached result of an attachment.
    pub fn cached(&self, sb: &Sandbox) -> Option<Value> {
        let text = std::fs::read_to_string(self.cache_file(sb)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// DEL: every plugin in reverse order, with the cached result when
    /// there is one; forgets the cache.
    pub fn del(&self, sb: &Sandbox) -> Result<(), CniFailure> {
        let cached = self.cached(sb);
        let extra: Vec<(&str, Value)> = cached.into_iter().map(|c| ("prevResult", c)).collect();
        for plugin in self.plugins().iter().rev() {
            self.exec(plugin, "DEL", Some(sb), &extra)?;
        }
        let _ = std::fs::remove_file(self.cache_file(sb));
        Ok(())
    }

    /// CHECK: every plugin in order with the cached result.
    pub fn check(&self, sb: &Sandbox) -> Result<(), CniFailure> {
        let cached = self.cached(sb).ok_or_else(|| CniFailure {
            plugin: "runtime".into(),
            command: "CHECK".into(),
            code: None,
            output: "no cached result".into(),
        })?;
        for plugin in self.plugins() {
            self.exec(&plugin, "CHECK", Some(sb), &[("prevResult", cached.clone())])?;
        }
        Ok(())
    }

    /// STATUS of every plugin.
    pub fn status(&self) -> Result<(), CniFailure> {
        for plugin in self.plugins() {
            self.exec(&plugin, "STATUS", None, &[])?;
        }
        Ok(())
    }

    /// GC of every plugin, keeping `valid`.
    pub fn gc(&self, valid: &[&Sandbox]) -> Result<(), CniFailure> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|s| json!({"containerID": s.container_id, "ifname": s.ifname}))
            .collect();
        for plugin in self.plugins() {
            self.exec(
                &plugin,
                "GC",
                None,
                &[("cni.dev/valid-attachments", Value::Array(valid.clone()))],
            )?;
        }
        Ok(())
    }
}

/// The pod's IPv4 address in a CNI result.
pub fn result_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
}
