//! `knit-probe control`: `hits` on request over HTTP, for a test that
//! drives pods from outside their network (`knitctl connectivity test`
//! reaches this server through the Kubernetes API's pod proxy). One
//! route: `GET /hits?to=A:P&count=C[&udp=true]`, answered with the JSON
//! `hits` prints.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::routing::get;

/// Serves on `port` (every address) until killed.
pub fn serve(port: u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .expect("bind control port");
        println!("control on {port}");
        let app = Router::new().route("/hits", get(hits));
        axum::serve(listener, app).await.expect("control server");
    });
}

/// A request's parameters.
#[derive(Debug, PartialEq)]
struct HitsRequest {
    to: SocketAddr,
    count: usize,
    udp: bool,
}

/// Parses `to=A:P&count=C[&udp=true]`, naming the parameter at fault.
fn parse(query: &str) -> Result<HitsRequest, String> {
    let (mut to, mut count, mut udp) = (None, None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "to" => to = Some(value.parse().map_err(|e| format!("to={value}: {e}"))?),
            "count" => {
                count = Some(
                    value
                        .parse::<usize>()
                        .ok()
                        .filter(|c| (1..=1000).contains(c))
                        .ok_or_else(|| format!("count={value}: a number from 1 to 1000"))?,
                )
            }
            "udp" => udp = value == "true",
            other => return Err(format!("unknown parameter {other}")),
        }
    }
    Ok(HitsRequest {
        to: to.ok_or("missing to=ADDRESS:PORT")?,
        count: count.ok_or("missing count=N")?,
        udp,
    })
}

async fn hits(RawQuery(query): RawQuery) -> (StatusCode, String) {
    let request = match parse(query.as_deref().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e),
    };
    let run = move || super::hits_json(request.to, request.count, request.udp, None);
    match tokio::task::spawn_blocking(run).await {
        Ok(json) => (StatusCode::OK, json.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_and_names_what_is_wrong() {
        assert_eq!(
            parse("to=10.96.0.5:8080&count=16"),
            Ok(HitsRequest {
                to: "10.96.0.5:8080".parse().unwrap(),
                count: 16,
                udp: false
            })
        );
        assert!(parse("to=10.96.0.5:8080&count=2&udp=true").unwrap().udp);
        assert_eq!(parse("count=2").unwrap_err(), "missing to=ADDRESS:PORT");
        assert!(parse("to=x&count=2").unwrap_err().starts_with("to=x"));
        assert!(parse("to=1.2.3.4:5&count=0").unwrap_err().starts_with("count=0"));
        assert_eq!(
            parse("to=1.2.3.4:5&count=1&x=1").unwrap_err(),
            "unknown parameter x"
        );
    }
}
