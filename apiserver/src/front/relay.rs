//! The peer front's relay: what an authorized peer may ask etcd.
//!
//! After [`crate::front`] has decided which peer a connection is, this
//! module terminates the peer's HTTP/2 and opens one HTTP/2 connection to
//! etcd as that peer's read-only user. Each gRPC call is looked at once, by
//! its method path, before anything of it reaches etcd (and a read's
//! request once more, by [`crate::front::read`], for the page it asks for):
//! - a method a KVStoreMesh needs ([`ALLOWED_METHODS`]: read a range, watch,
//!   and the status call clients make when connecting) is relayed, with its
//!   streamed bodies and trailers, both ways;
//! - anything else is answered here with gRPC `PERMISSION_DENIED` and never
//!   reaches etcd. etcd's RBAC would refuse writes too; this is the second
//!   wall, and it also keeps a peer away from every etcd API that RBAC
//!   does not cover (leases, maintenance, cluster membership).
//!
//! [`method_allowed`] is a value decision and unit-tested; the rest is hyper.

use http::{HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::PeerDetail;
use crate::{Error, Result};

/// The gRPC methods a peer may call: everything a KVStoreMesh (and
/// `etcdctl get`/`watch`) needs, nothing that writes or administers.
pub const ALLOWED_METHODS: [&str; 3] = [
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Maintenance/Status",
];

/// gRPC status code `PERMISSION_DENIED`.
const PERMISSION_DENIED: &str = "7";
/// gRPC status code `RESOURCE_EXHAUSTED`: over the peer's request rate.
const RESOURCE_EXHAUSTED: &str = "8";
/// gRPC status code `INVALID_ARGUMENT`: a read the front cannot look into.
const INVALID_ARGUMENT: &str = "3";
/// The largest Range request the front reads (keys are at most a few
/// hundred bytes; etcd's own request limit is far above what a read needs).
const MAX_RANGE_REQUEST: usize = 64 << 10;

/// Whether a peer may call the gRPC method at `path` (exact match).
pub fn method_allowed(path: &str) -> bool {
    ALLOWED_METHODS.contains(&path)
}

type Body = BoxBody<Bytes, hyper::Error>;

/// How much one relayed connection may take.
pub struct RelayLimits {
    /// Concurrent HTTP/2 streams (calls, watches).
    pub max_streams: u32,
    /// HTTP/2 ping interval, and how long an answer may take.
    pub keepalive: std::time::Duration,
    /// The peer's request rate.
    pub rate: crate::front::limits::RequestRate,
    /// Where the peer's watch streams are counted.
    pub admission: crate::front::limits::Admission,
    /// Keys one read may ask for ([`crate::front::read`]).
    pub read_page: i64,
}

/// The gRPC method of a watch stream.
const WATCH: &str = "/etcdserverpb.Watch/Watch";
/// The gRPC method of a read (a get or a list).
const RANGE: &str = "/etcdserverpb.KV/Range";

/// Relays gRPC calls of `peer` from `downstream` (the peer's TLS stream)
/// to `upstream` (etcd, already authenticated as the peer's user) until
/// either side closes. `calls` counts calls by peer and outcome
/// (`relayed`, `paced` (relayed after waiting for the rate), `denied`,
/// `malformed`, `rate_limited`, `too_many_watches`).
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    peer: String,
    calls: Family<PeerDetail, Counter>,
    limits: RelayLimits,
) -> Result<()>
where
    D: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(upstream))
        .await
        .map_err(|e| Error::Front(format!("HTTP/2 to etcd: {e}")))?;
    let upstream_task = tokio::spawn(connection);
    let rate = limits.rate.clone();
    let admission = limits.admission.clone();
    let page = limits.read_page;
    let service = service_fn(move |request: Request<Incoming>| {
        let mut sender = sender.clone();
        let (peer, calls, rate) = (peer.clone(), calls.clone(), rate.clone());
        let delay = rate.reserve(&peer, std::time::Instant::now());
        let watch = (request.uri().path() == WATCH).then(|| admission.watch(&peer));
        async move {
            let method = request.uri().path().to_owned();
            let request = bounded(request, method == RANGE, page).await;
            let outcome = if !method_allowed(&method) {
                "denied"
            } else if request.is_err() {
                "malformed"
            } else if delay.is_none() {
                "rate_limited"
            } else if matches!(watch, Some(Err(_))) {
                "too_many_watches"
            } else if delay.is_some_and(|d| !d.is_zero()) {
                "paced"
            } else {
                "relayed"
            };
            calls
                .get_or_create(&PeerDetail {
                    peer: peer.clone(),
                    detail: outcome.to_owned(),
                })
                .inc();
            let refusal = match outcome {
                "denied" => {
                    tracing::warn!(%peer, %method, "refused a gRPC method at the peer front");
                    Some(denied(&method))
                }
                "rate_limited" => Some(refused(
                    RESOURCE_EXHAUSTED,
                    &format!("the peer front limits {peer}'s request rate; retry later"),
                )),
                "too_many_watches" => Some(refused(
                    RESOURCE_EXHAUSTED,
                    &format!("the peer front limits {peer}'s concurrent watches; end one first"),
                )),
                "malformed" => Some(refused(
                    INVALID_ARGUMENT,
                    &format!(
                        "the peer front relays a Range only as one uncompressed RangeRequest; got {}",
                        request.as_ref().err().copied().unwrap_or_default()
                    ),
                )),
                _ => None,
            };
            if let Some(refusal) = refusal {
                // Held before it is answered: a peer looping on refusals
                // gets one per stream slot per delay.
                tokio::time::sleep(rate.refusal_delay()).await;
                return Ok::<_, hyper::Error>(refusal);
            }
            if let Some(wait) = delay.filter(|d| !d.is_zero()) {
                tokio::time::sleep(wait).await;
            }
            let Ok(request) = request else {
                unreachable!("a malformed request is refused above")
            };
            let response = sender.send_request(request).await?;
            // A watch's slot goes with its response body: when the stream
            // ends, it is given back. A read's answer is charged to the
            // peer's byte budget as it goes out.
            let slot = watch.and_then(Result::ok);
            let charged = (method == RANGE).then_some((rate, peer));
            Ok(response.map(move |body| {
                body.map_frame(move |frame| {
                    let _held = &slot;
                    if let (Some((rate, peer)), Some(data)) = (&charged, frame.data_ref()) {
                        rate.charge(peer, data.len(), std::time::Instant::now());
                    }
                    frame
                })
                .boxed()
            }))
        }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .keep_alive_interval(limits.keepalive)
        .keep_alive_timeout(limits.keepalive)
        .serve_connection(TokioIo::new(downstream), service)
        .await;
    upstream_task.abort();
    served.map_err(|e| Error::Front(format!("HTTP/2 from the peer: {e}")))
}

/// The request as it goes to etcd: a Range (`range`) collected and held to
/// `page` keys ([`crate::front::read::clamp_range`]), anything else streamed
/// as it comes. `Err` says why a Range cannot be relayed.
async fn bounded(
    request: Request<Incoming>,
    range: bool,
    page: i64,
) -> std::result::Result<Request<Body>, &'static str> {
    if !range {
        return Ok(request.map(BodyExt::boxed));
    }
    let (parts, body) = request.into_parts();
    let body = http_body_util::Limited::new(body, MAX_RANGE_REQUEST)
        .collect()
        .await
        .map_err(|_| "a request over 64 KiB or cut short")?
        .to_bytes();
    let crate::front::read::RangeRefusal::Malformed(why) = match crate::front::read::clamp_range(body, page) {
        Ok(body) => {
            let body = http_body_util::Full::new(body)
                .map_err(|never| match never {})
                .boxed();
            return Ok(Request::from_parts(parts, body));
        }
        Err(refusal) => refusal,
    };
    Err(why)
}

/// A trailers-only gRPC answer: `PERMISSION_DENIED`, naming the method.
fn denied(method: &str) -> Response<Body> {
    refused(
        PERMISSION_DENIED,
        &format!("permission denied: the peer front does not relay {method}"),
    )
}

/// A trailers-only gRPC answer with `status` and `message`.
fn refused(status: &'static str, message: &str) -> Response<Body> {
    let mut response = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(status));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is,
/// everything else as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_read_methods_a_kvstoremesh_needs_are_allowed() {
        for method in ALLOWED_METHODS {
            assert!(method_allowed(method));
        }
        for method in [
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.KV/DeleteRange",
            "/etcdserverpb.KV/Txn",
            "/etcdserverpb.KV/Compact",
            "/etcdserverpb.Lease/LeaseGrant",
            "/etcdserverpb.Auth/UserAdd",
            "/etcdserverpb.Auth/Authenticate",
            "/etcdserverpb.Cluster/MemberAdd",
            "/etcdserverpb.Maintenance/Defragment",
            "/etcdserverpb.Maintenance/Snapshot",
            "/etcdserverpb.KV/Range/",
            "/etcdserverpb.kv/range",
            "",
        ] {
            assert!(!method_allowed(method), "{method}");
        }
    }

    #[test]
    fn the_denial_is_a_trailers_only_grpc_status() {
        let response = denied("/etcdserverpb.KV/Put");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "7");
        assert_eq!(
            response.headers()["grpc-message"],
            "permission denied: the peer front does not relay /etcdserverpb.KV/Put"
        );
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }
}
