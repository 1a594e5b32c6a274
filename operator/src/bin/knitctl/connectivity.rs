//! `knitctl connectivity test` against clusters reached through kubeconfig
//! contexts: each cluster's name is read from its operator config, the
//! test runs over [`KubeSites`], and the pass/fail table (or JSON) is
//! printed. Exits non-zero when a check fails.

use std::net::SocketAddrV4;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use knit_operator::config::ClusterConfig;
use knit_operator::connectivity::kubernetes::{KubeSites, Waits};
use kube::api::Api;
use kube::config::KubeConfigOptions;

/// `knitctl connectivity test`'s arguments.
#[derive(clap::Args)]
pub struct TestArgs {
    /// A kubeconfig context, one per cluster of the mesh (repeat; none:
    /// the current context alone).
    #[arg(long = "context")]
    contexts: Vec<String>,
    /// Namespace Knit is installed in.
    #[arg(long, default_value = "knit-system")]
    namespace: String,
    /// The test pods' image (knit-probe, images/probe.Dockerfile).
    #[arg(long, default_value = concat!("ghcr.io/knit-dev/knit-probe:v", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Requests per check.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// An address:port out of the mesh that answers TCP, for the egress
    /// check (skipped without).
    #[arg(long)]
    outside: Option<SocketAddrV4>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = super::Format::Table)]
    output: super::Format,
}

/// A client of `context` (the current one when none).
pub async fn client(context: Option<&str>) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_kubeconfig(&options).await.with_context(|| {
        format!(
            "reading the kubeconfig for context {}",
            context.unwrap_or("(current)")
        )
    })?;
    Ok(kube::Client::try_from(config)?)
}

/// The cluster name in the operator config of `namespace`.
async fn cluster_name(client: &kube::Client, namespace: &str, context: &str) -> anyhow::Result<String> {
    let text = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get("knit-operator-config")
        .await
        .with_context(|| {
            format!("reading ConfigMap {namespace}/knit-operator-config in context {context} (is Knit installed there?)")
        })?
        .data
        .and_then(|d| d.get("config.yaml").cloned())
        .with_context(|| format!("ConfigMap {namespace}/knit-operator-config in {context} has no key config.yaml"))?;
    Ok(ClusterConfig::from_yaml(&text)?.cluster_name)
}

/// Runs the test; fails when a check does.
pub async fn test(args: TestArgs) -> anyhow::Result<()> {
    let contexts: Vec<Option<&str>> = if args.contexts.is_empty() {
        vec![None]
    } else {
        args.contexts.iter().map(|c| Some(c.as_str())).collect()
    };
    let mut clusters = Vec::new();
    for context in contexts {
        let client = client(context).await?;
        let name = cluster_name(&client, &args.namespace, context.unwrap_or("(current)")).await?;
        if clusters.iter().any(|(n, _)| n == &name) {
            bail!("two contexts name the same cluster {name}: give one context per cluster");
        }
        clusters.push((name, client));
    }
    let mut sites = KubeSites::new(clusters, args.image, Waits::default());
    let names = sites.cluster_names();
    eprintln!(
        "deploying the test workloads into {}, then {} requests per check",
        names.join(", "),
        args.count
    );
    let report = knit_operator::connectivity::run(&mut sites, &names, args.count, args.outside).await?;
    match args.output {
        super::Format::Table => print!("{}", report.table()),
        super::Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if !report.passed() {
        bail!("the connectivity test failed");
    }
    Ok(())
}
