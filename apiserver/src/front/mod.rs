//! The peer front: the only way a peer cluster reaches this cluster's etcd.
//!
//! etcd maps a client certificate's CN to a user and trusts every CA in its
//! bundle alike, so a peer's CA could mint `CN=admin`. Peers therefore
//! never reach etcd directly (etcd trusts only the local CA). They reach
//! this TLS front, which:
//!
//! 1. accepts a client certificate only if it chains to the CA of a
//!    configured peer ([`PeerTrust`], from the peer-config directory);
//! 2. and only if its CN is exactly `remote-<that peer>` ([`authorize`]): a
//!    peer's CA can act as that peer and nothing else;
//! 3. then opens a connection to etcd on loopback as that peer's read-only
//!    user, with a certificate the local CA issued for it
//!    (`<peer-access>/<peer>.crt`), and relays the peer's gRPC calls there,
//!    only the read methods ([`crate::front::relay`]).
//!
//! Authorization is decided from values ([`authorize`], in
//! [`crate::front::trust`]), so it has unit tests; the socket work is thin.

pub mod limits;
pub mod read;
pub mod relay;
pub mod trust;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::front::limits::{Admission, FrontLimits, HandshakeSlot, RequestRate};
pub use crate::front::trust::{PeerTrust, Refusal, authorize};
use crate::metrics::{Metrics, ReasonLabel};
use crate::{Error, Result};

/// Where the front reads its files.
#[derive(Clone, Debug)]
pub struct FrontSettings {
    /// Address peers connect to.
    pub listen: SocketAddr,
    /// The front's server certificate and key (`tls.crt`, `tls.key`),
    /// issued by the mesh CA (etcd's own comes from the local CA). Read
    /// again every few seconds, so a renewed or rolled certificate is
    /// served to new connections without a restart.
    pub server_cert_dir: PathBuf,
    /// Peer configs (`<peer>.yaml` and `<peer>.ca.crt`): whom to trust.
    pub peer_configs: PathBuf,
    /// Per-peer upstream certificates issued by the local CA
    /// (`<peer>.crt`, `<peer>.key`) and the local CA (`ca.crt`).
    pub peer_access: PathBuf,
    /// etcd on loopback, e.g. `127.0.0.1:2379`.
    pub upstream: SocketAddr,
    /// What one source or one peer may take.
    pub limits: FrontLimits,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::Front(format!("reading certificates {}: {e}", path.display())))
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Error::Front(format!("reading key {}: {e}", path.display())))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server config accepting certificates of any configured peer's
/// CA (who they may act as is decided after the handshake).
fn server_config(settings: &FrontSettings, trust: &PeerTrust) -> Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(trust.roots()), provider())
        .build()
        .map_err(|e| Error::Front(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Front(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&settings.server_cert_dir.join("tls.crt"))?,
            key(&settings.server_cert_dir.join("tls.key"))?,
        )
        .map_err(|e| Error::Front(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS client config reaching etcd as `peer`'s read-only user.
fn upstream_config(settings: &FrontSettings, peer: &str) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for ca in certs(&settings.peer_access.join("ca.crt"))? {
        roots
            .add(ca)
            .map_err(|e| Error::Front(format!("local CA: {e}")))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Front(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs(&settings.peer_access.join(format!("{peer}.crt")))?,
            key(&settings.peer_access.join(format!("{peer}.key")))?,
        )
        .map_err(|e| Error::Front(format!("upstream certificate of {peer}: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Serves peers until the process stops. The peer set is read again every
/// few seconds, so adding or removing a ClusterMeshPeer needs no restart.
pub async fn run_front(settings: FrontSettings, metrics: Metrics) -> Result<()> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| Error::Front(format!("listening on {}: {e}", settings.listen)))?;
    tracing::info!(listen = %settings.listen, "peer front listening");
    let mut trust = PeerTrust::load(&settings.peer_configs);
    trust.warn_unusable(None);
    let mut acceptor = server_config(&settings, &trust).ok().map(TlsAcceptor::from);
    let mut reload = tokio::time::interval(Duration::from_secs(2));
    let admission = Admission::new(settings.limits);
    let rate = RequestRate::new(&settings.limits);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, from) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, typically: retrying at
                        // once would spin; the sockets held time out.
                        refuse(&metrics, "accept_failed");
                        tracing::warn!(error = %e, "accepting a peer connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(acceptor) = acceptor.clone() else { continue };
                let slot = match admission.handshake(from.ip()) {
                    Ok(slot) => slot,
                    Err(busy) => {
                        refuse(&metrics, busy.as_str());
                        continue;
                    }
                };
                let (settings, trust, metrics) = (settings.clone(), trust.clone(), metrics.clone());
                let (admission, rate) = (admission.clone(), rate.clone());
                tokio::spawn(async move {
                    let peer = Peer { slot, admission: &admission, rate };
                    if let Err(e) = serve(socket, acceptor, &settings, &trust, &metrics, peer).await {
                        tracing::info!(%from, error = %e, "peer connection refused or ended");
                    }
                });
            }
            _ = reload.tick() => {
                let next = PeerTrust::load(&settings.peer_configs);
                next.warn_unusable(Some(&trust));
                trust = next;
                match server_config(&settings, &trust) {
                    Ok(config) => acceptor = (!trust.is_empty()).then(|| TlsAcceptor::from(config)),
                    Err(e) => tracing::warn!(error = %e, "peer front config not usable yet"),
                }
            }
        }
    }
}

fn refuse(metrics: &Metrics, reason: &str) {
    metrics
        .front_refused
        .get_or_create(&ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
}

/// What a connection holds while it is served: its handshake slot (given
/// back once it is admitted, or a while after it is refused), the admission it takes a connection
/// slot from, and its peer's request rate.
struct Peer<'a> {
    slot: HandshakeSlot,
    admission: &'a Admission,
    rate: RequestRate,
}

async fn serve(
    socket: TcpStream,
    acceptor: TlsAcceptor,
    settings: &FrontSettings,
    trust: &PeerTrust,
    metrics: &Metrics,
    admitted: Peer<'_>,
) -> Result<()> {
    // Every refusal holds the connection's handshake slot a while before it
    // closes: a client reconnecting in a loop costs the front one handshake
    // per slot per delay, not thousands a second.
    let hold = settings.limits.max_request_delay;
    let refused = |reason: &str, error: Error| {
        refuse(metrics, reason);
        async move {
            tokio::time::sleep(hold).await;
            Err(error)
        }
    };
    relay_without_delay(&socket);
    let tls = match tokio::time::timeout(settings.limits.handshake_timeout, acceptor.accept(socket)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return refused("handshake", Error::Front(format!("TLS handshake: {e}"))).await,
        Err(_) => {
            refuse(metrics, "handshake");
            return Err(Error::Front("TLS handshake timed out".into()));
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| Error::Front("no client certificate".into()))?;
    let peer = match authorize(trust, &leaf) {
        Ok(peer) => peer,
        Err(refusal) => {
            tracing::warn!(?refusal, "refused a client certificate at the peer front");
            return refused(refusal.as_str(), Error::Front(format!("refused: {refusal:?}"))).await;
        }
    };
    let _connection = match admitted.admission.connection(&peer) {
        Ok(slot) => slot,
        Err(busy) => {
            let error = Error::Front(format!("refused {peer}: {}", busy.as_str()));
            return refused(busy.as_str(), error).await;
        }
    };
    drop(admitted.slot);
    let connector = TlsConnector::from(upstream_config(settings, &peer)?);
    let upstream = TcpStream::connect(settings.upstream)
        .await
        .map_err(|e| Error::Front(format!("connecting to etcd: {e}")))?;
    relay_without_delay(&upstream);
    let name = ServerName::IpAddress(settings.upstream.ip().into());
    let upstream = connector
        .connect(name, upstream)
        .await
        .map_err(|e| Error::Front(format!("TLS to etcd: {e}")))?;
    let limits = crate::front::relay::RelayLimits {
        max_streams: settings.limits.max_streams_per_connection,
        keepalive: settings.limits.keepalive,
        rate: admitted.rate,
        admission: admitted.admission.clone(),
        read_page: settings.limits.max_read_keys,
    };
    crate::front::relay::relay(tls, upstream, peer, metrics.front_calls.clone(), limits).await
}

/// Turns Nagle's algorithm off on a relayed connection. Watch events are
/// small writes relayed one by one; with it on, each waited for the ACK of
/// the one before, which the other side delays by up to 40 ms: propagation
/// under 1,000 changes/s had a p99 of 90 ms, 9 ms without.
fn relay_without_delay(socket: &TcpStream) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot turn Nagle's algorithm off");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relayed_connections_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for socket in [&client, &server] {
            assert!(!socket.nodelay().unwrap(), "Nagle is on by default");
            relay_without_delay(socket);
            assert!(socket.nodelay().unwrap());
        }
    }
}
