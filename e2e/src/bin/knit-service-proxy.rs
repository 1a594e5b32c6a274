//! The local mesh's stand-in for a Kubernetes Service in front of the
//! mesh apiserver's replicas: a TCP proxy in the control plane's network
//! namespace.
//!
//! `knit-service-proxy --port 2379 --port 2480 --backend 192.168.50.17
//! --backend 192.168.50.18` listens on every `--port` (all addresses) and
//! hands each new connection to the backends in turn, on the same port.
//! A backend that refuses or does not answer within a second is skipped
//! for that connection, as kube-proxy stops sending to a pod that is no
//! longer ready; a connection whose backend goes away is closed, so the
//! client reconnects and lands on another replica. Each choice is logged
//! on stderr (`<client> -> <backend>`).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

struct Args {
    ports: Vec<u16>,
    backends: Vec<IpAddr>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ports: Vec::new(),
        backends: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => args
                .ports
                .push(value.parse().map_err(|e| format!("--port {value}: {e}"))?),
            "--backend" => args
                .backends
                .push(value.parse().map_err(|e| format!("--backend {value}: {e}"))?),
            other => return Err(format!("unknown flag {other}: use --port P and --backend IP")),
        }
    }
    if args.ports.is_empty() || args.backends.is_empty() {
        return Err("give at least one --port and one --backend".into());
    }
    Ok(args)
}

/// Connects to the backends on `port`, starting at the `first`-th, and
/// returns the first that answers.
async fn connect_any(backends: &[IpAddr], port: u16, first: usize) -> Option<(SocketAddr, TcpStream)> {
    for i in 0..backends.len() {
        let to = SocketAddr::new(backends[(first + i) % backends.len()], port);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(to)).await {
            return Some((to, stream));
        }
    }
    None
}

async fn serve(port: u16, backends: Arc<Vec<IpAddr>>, next: Arc<AtomicUsize>) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (mut client, from) = listener.accept().await?;
        let (backends, first) = (backends.clone(), next.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            let Some((to, mut backend)) = connect_any(&backends, port, first).await else {
                eprintln!("{from} -> no backend answers on port {port}");
                return;
            };
            eprintln!("{from} -> {to}");
            let _ = client.set_nodelay(true);
            let _ = backend.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("knit-service-proxy: {e}");
            std::process::exit(2);
        }
    };
    let backends = Arc::new(args.backends);
    let next = Arc::new(AtomicUsize::new(0));
    let servers: Vec<_> = args
        .ports
        .iter()
        .map(|port| tokio::spawn(serve(*port, backends.clone(), next.clone())))
        .collect();
    for server in servers {
        if let Ok(Err(e)) = server.await {
            eprintln!("knit-service-proxy: {e}");
            std::process::exit(1);
        }
    }
}
