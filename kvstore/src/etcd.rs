//! Connecting to etcd over mTLS from an [`EtcdClientConfig`] file.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::{Error, EtcdClientConfig, Result};

/// Reads a client config file and resolves its relative paths against the
/// file's directory.
pub fn load_client_config(path: &Path) -> Result<EtcdClientConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let config = EtcdClientConfig::from_yaml(&text)?;
    Ok(config.resolved_in(path.parent().unwrap_or(Path::new("."))))
}

/// Connects with mutual TLS from PEM held in memory (e.g. read from a Secret).
pub async fn connect_pem(endpoints: &[String], ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Client> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    connect_tls(endpoints, tls).await
}

/// Connects with mutual TLS. Paths in `config` must already be resolved.
/// HTTP/2 keepalives detect a dead server within about ten seconds, so a
/// watch on a vanished peer ends instead of hanging.
pub async fn connect(config: &EtcdClientConfig) -> Result<Client> {
    connect_tls(&config.endpoints, tls_options(config)?).await
}

/// Connects with `config`'s certificates to one replica of a replicated
/// etcd at `address`, checking the server's certificate for `server_name`
/// (the name the replicas share, not the address that was dialled).
pub async fn connect_replica(
    config: &EtcdClientConfig,
    address: std::net::SocketAddr,
    server_name: &str,
) -> Result<Client> {
    let tls = tls_options(config)?.domain_name(server_name);
    connect_tls(&[format!("https://{address}")], tls).await
}

fn tls_options(config: &EtcdClientConfig) -> Result<TlsOptions> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::ReadFile {
            path: p.to_owned(),
            source,
        })
    };
    Ok(TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&config.trusted_ca_file)?))
        .identity(Identity::from_pem(
            read(&config.cert_file)?,
            read(&config.key_file)?,
        )))
}

async fn connect_tls(endpoints: &[String], tls: TlsOptions) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(3), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|source| Error::Etcd {
            action: format!("connecting to {}", endpoints.join(",")),
            source,
        })
}

/// The name of the cluster a local kvstore belongs to: it holds exactly one
/// cluster under `clusters/` (peers are under `cache/`), and that cluster's
/// `config` key sorts first. `None` before the apiserver's first export.
pub async fn local_cluster_name(client: &mut Client) -> Result<Option<String>> {
    let resp = client
        .get(
            crate::keys::clusters_prefix(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(1),
            ),
        )
        .await
        .map_err(|source| Error::Etcd {
            action: "read the cluster name".into(),
            source,
        })?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| kv.key_str().ok())
        .and_then(|k| k.split('/').nth(3))
        .map(str::to_owned))
}

/// Every service exported in the mesh as this cluster's kvstore holds them:
/// this cluster's own (`clusters/<own>/services/`) and each mirrored peer's
/// (`cache/<peer>/services/`, peers named by the KVStoreMesh's reports).
/// Unreadable records are skipped.
pub async fn exported_services(client: &mut Client) -> Result<Vec<crate::records::ServiceRecord>> {
    use crate::keys::{Kind, cache_prefix, cluster_prefix, mesh_status_prefix};
    let mut prefixes = Vec::new();
    if let Some(own) = local_cluster_name(client).await? {
        prefixes.push(format!("{}{}/", cluster_prefix(&own), Kind::Services));
    }
    let reports: Vec<crate::records::PeerStatusRecord> = read_all(client, &mesh_status_prefix()).await?;
    prefixes.extend(
        reports
            .iter()
            .map(|r| format!("{}{}/", cache_prefix(&r.peer), Kind::Services)),
    );
    let mut out = Vec::new();
    for prefix in prefixes {
        out.extend(read_all(client, &prefix).await?);
    }
    Ok(out)
}

/// Records per page when reading a prefix: one response stays far below
/// gRPC's 4 MiB message limit, which an unpaged read of a large prefix
/// passes (65,000 identity records are about 13 MB) and then fails on
/// every retry.
const READ_PAGE: i64 = 1000;

/// Every record under `prefix` that decodes as `T`, read a page at a time
/// at one revision; unreadable records are skipped.
pub async fn read_all<T: serde::de::DeserializeOwned>(client: &mut Client, prefix: &str) -> Result<Vec<T>> {
    let end = prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut out = Vec::new();
    loop {
        let mut options = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(READ_PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = client
            .get(from.clone(), Some(options))
            .await
            .map_err(|source| Error::Etcd {
                action: format!("read {prefix}"),
                source,
            })?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        }
        out.extend(
            resp.kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok()),
        );
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
