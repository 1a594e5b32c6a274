//! One GET to the agent over its unix socket, the answer read as JSON.

use std::path::Path;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Asks the agent listening on `socket` for `path` (with its query).
pub async fn get<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T> {
    let request_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Request {
        path: path.to_owned(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| Error::Connect {
            socket: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| request_err(e.into()))?;
    let connection = tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, "knit-agent")
        .body(Empty::<Bytes>::new())
        .map_err(|e| request_err(e.into()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| request_err(e.into()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| request_err(e.into()))?
        .to_bytes();
    connection.abort();
    if !status.is_success() {
        return Err(Error::Status {
            path: path.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| Error::Decode {
        path: path.to_owned(),
        source,
    })
}
