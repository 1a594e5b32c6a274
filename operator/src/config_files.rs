//! The operator's configuration as mounted files, and noticing their
//! changes.
//!
//! `config.yaml` comes from ConfigMap `knit-operator-config` and the image
//! files (`apiserver`, `etcd`) from ConfigMap `knit-images`, both mounted as
//! whole directories (no `subPath`), so the kubelet rewrites them in place
//! within its sync period (about a minute) when the ConfigMaps change: a
//! change committed to git, or a step of the mesh CA roll. The operator
//! polls the files ([`ConfigFiles::next_change`]) and, on a change that
//! parses, reconciles with the new configuration; a change that does not
//! parse is logged with the field and the fix, and the running
//! configuration is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::ClusterConfig;
use crate::{Error, Result};

/// Where the configuration is mounted.
#[derive(Clone, Debug)]
pub struct ConfigFiles {
    /// The cluster config (`config.yaml`).
    pub config: PathBuf,
    /// A directory with files `apiserver` and `etcd` naming the mesh
    /// apiserver's images; they override the config's `images`.
    pub images_dir: Option<PathBuf>,
    /// The operator's own namespace (its pod's, `POD_NAMESPACE`); overrides
    /// the config's `namespace`, so an overlay that moves Knit elsewhere
    /// needs no config change.
    pub namespace: Option<String>,
}

/// A configuration and the file contents it was read from.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: ClusterConfig,
    contents: Vec<Option<String>>,
}

impl ConfigFiles {
    fn read(&self) -> Result<Vec<Option<String>>> {
        let text = std::fs::read_to_string(&self.config).map_err(|source| Error::File {
            action: "reading cluster config",
            path: self.config.clone(),
            source,
        })?;
        let mut out = vec![Some(text)];
        if let Some(dir) = &self.images_dir {
            for name in ["apiserver", "etcd"] {
                out.push(read_optional(&dir.join(name))?);
            }
        }
        Ok(out)
    }

    fn parse(&self, contents: Vec<Option<String>>) -> Result<LoadedConfig> {
        let mut config = ClusterConfig::from_yaml(contents[0].as_deref().unwrap_or_default())?;
        if let Some(ns) = &self.namespace
            && *ns != config.namespace
        {
            tracing::info!(config = %config.namespace, pod = %ns, "using the operator pod's namespace");
            config.namespace = ns.clone();
        }
        if let Some(Some(image)) = contents.get(1) {
            config.images.apiserver = image.trim().to_owned();
        }
        if let Some(Some(image)) = contents.get(2) {
            config.images.etcd = image.trim().to_owned();
        }
        Ok(LoadedConfig { config, contents })
    }

    /// Reads and checks the configuration.
    ///
    /// # Errors
    /// A file that cannot be read, or a config that does not parse or
    /// names a bad value (the error names the field).
    pub fn load(&self) -> Result<LoadedConfig> {
        self.parse(self.read()?)
    }

    /// Waits, checking every `interval`, until the files differ from what
    /// `current` was read from and the new contents parse; returns them.
    pub async fn next_change(&self, current: &LoadedConfig, interval: Duration) -> LoadedConfig {
        let mut rejected: Option<Vec<Option<String>>> = None;
        loop {
            tokio::time::sleep(interval).await;
            let contents = match self.read() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %knit_telemetry::error_chain(&e), "cannot read the operator config; keeping the running one");
                    continue;
                }
            };
            if contents == current.contents || rejected.as_ref() == Some(&contents) {
                continue;
            }
            match self.parse(contents.clone()) {
                Ok(loaded) => return loaded,
                Err(e) => {
                    tracing::warn!(error = %knit_telemetry::error_chain(&e), "the changed operator config is invalid; keeping the running one");
                    rejected = Some(contents);
                }
            }
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::File {
            action: "reading",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_namespace_wins_over_the_configs() {
        let dir = std::env::temp_dir().join(format!("knit-config-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.yaml"),
            "clusterName: a\nclusterID: 1\nnamespace: knit-system\n",
        )
        .unwrap();
        let mut files = ConfigFiles {
            config: dir.join("config.yaml"),
            images_dir: None,
            namespace: None,
        };
        assert_eq!(files.load().unwrap().config.namespace, "knit-system");
        files.namespace = Some("mesh".into());
        assert_eq!(files.load().unwrap().config.namespace, "mesh");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
