//! `knit-probe`: the workload the local mesh runs inside pod namespaces.
//!
//! - `serve --name N --port P[,P2…]`: TCP and UDP on each port; every line
//!   (or datagram) received is answered with `N`.
//! - `matrix --to A:P[,A2:P2…] [--udp] [--timeout-ms T]`: one request to
//!   each target at once; prints JSON `{"A:P": true|false}` (answered
//!   within T ms, default 600).
//! - `hits --to A:P --count C [--udp] [--source-port S]`: C requests, each
//!   on a new socket (TCP ones from port S if given, which may still be in
//!   TIME_WAIT from an earlier connection to another address); prints JSON
//!   `{"names": {server: n}, "errors": {kind: n}, "peer_mismatch": n}`
//!   where `peer_mismatch` counts answers whose source (UDP) or peer name
//!   (TCP) was not `A:P`, i.e. replies not translated back to the VIP.
//! - `count --port P --seconds S`: counts the UDP datagrams that reach
//!   port P within S seconds; prints JSON `{"count": n}`.
//! - `udp-send --from IP --to A:P --count C`: C datagrams to A:P from a
//!   socket bound to IP (an address the pod holds, or has taken).
//! - `vxlan-send --to A:P --vni V --inner-src IP:PORT --inner-dst IP:PORT
//!   --count C`: C VXLAN datagrams to A:P, each carrying an Ethernet frame
//!   with a UDP datagram from inner-src to inner-dst (what anyone who
//!   reaches a node's tunnel port can send: a forged mesh packet).
//!   `--outer-src IP` sends them from IP, whoever holds it (a raw socket:
//!   a host on the underlay posing as a node).
//! - `--version`: prints `knit-probe <version>`.
//! - `control --port P`: an HTTP server on P for a test driven from
//!   afar (`knitctl connectivity test` through the Kubernetes API's pod
//!   proxy): `GET /hits?to=A:P&count=C` runs `hits` from here and answers
//!   with its JSON.
//! - `hold --to A:P --seconds S`: one TCP connection, a request every
//!   50 ms; exits non-zero on the first failure.
//! - `crr` / `rr --to A:P --seconds S`: benchmark loops (connect, request,
//!   response, close; or requests on one connection); print JSON figures.
//!   `crr --pause-ms M` waits M ms between requests (a steady client rather
//!   than a benchmark) and reports failures by kind, and the first 20
//!   failures with when each request started (`failures`: UTC seconds since
//!   the epoch, to line up with the components' logs) and the error;
//!   `--stop-file F` ends the loop early once F exists.

mod control;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn required(args: &[String], name: &str) -> String {
    arg(args, name).unwrap_or_else(|| {
        eprintln!("missing {name}");
        std::process::exit(2)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let name = required(&args, "--name");
            let ports: Vec<u16> = required(&args, "--port")
                .split(',')
                .map(|p| p.parse().expect("port"))
                .collect();
            for port in ports.iter().skip(1).copied() {
                let name = name.clone();
                std::thread::spawn(move || serve(&name, port));
            }
            serve(&name, ports[0]);
        }
        Some("matrix") => matrix(
            &required(&args, "--to"),
            args.iter().any(|a| a == "--udp"),
            arg(&args, "--timeout-ms").map_or(600, |t| t.parse().expect("timeout")),
        ),
        Some("hits") => hits(
            required(&args, "--to").parse().expect("address"),
            required(&args, "--count").parse().expect("count"),
            args.iter().any(|a| a == "--udp"),
            arg(&args, "--source-port").map(|p| p.parse().expect("source port")),
        ),
        Some("count") => count(
            required(&args, "--port").parse().expect("port"),
            required(&args, "--seconds").parse().expect("seconds"),
        ),
        Some("udp-send") => udp_send(
            required(&args, "--from").parse().expect("source address"),
            required(&args, "--to").parse().expect("address"),
            required(&args, "--count").parse().expect("count"),
        ),
        Some("vxlan-send") => vxlan_send(
            required(&args, "--to").parse().expect("address"),
            required(&args, "--vni").parse().expect("vni"),
            required(&args, "--inner-src").parse().expect("inner source"),
            required(&args, "--inner-dst").parse().expect("inner destination"),
            required(&args, "--count").parse().expect("count"),
            arg(&args, "--outer-src").map(|a| a.parse().expect("outer source")),
        ),
        Some("--version") => println!("knit-probe {}", env!("CARGO_PKG_VERSION")),
        Some("control") => control::serve(required(&args, "--port").parse().expect("port")),
        Some("hold") => hold(
            required(&args, "--to").parse().expect("address"),
            required(&args, "--seconds").parse().expect("seconds"),
        ),
        Some("crr") => crr(
            required(&args, "--to").parse().expect("address"),
            required(&args, "--seconds").parse().expect("seconds"),
            arg(&args, "--pause-ms").map_or(0, |m| m.parse().expect("pause")),
            arg(&args, "--stop-file"),
        ),
        Some("rr") => rr(
            required(&args, "--to").parse().expect("address"),
            required(&args, "--seconds").parse().expect("seconds"),
        ),
        _ => {
            eprintln!("usage: knit-probe serve|hits|control|hold|crr|rr ...");
            std::process::exit(2)
        }
    }
}

fn serve(name: &str, port: u16) {
    let udp = UdpSocket::bind(("0.0.0.0", port)).expect("bind UDP");
    let reply = name.to_owned();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(reply.as_bytes(), from);
        }
    });
    let tcp = TcpListener::bind(("0.0.0.0", port)).expect("bind TCP");
    println!("serving {name} on {port}");
    for conn in tcp.incoming().flatten() {
        let name = format!("{name}\n");
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut writer = conn.try_clone().expect("clone");
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if writer.write_all(name.as_bytes()).is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
}

/// One request to each of `targets` (comma-separated) in parallel; which answered.
fn matrix(targets: &str, udp: bool, timeout_ms: u64) {
    let timeout = Duration::from_millis(timeout_ms);
    let probes: Vec<(String, std::thread::JoinHandle<bool>)> = targets
        .split(',')
        .map(|t| {
            let to: SocketAddr = t.parse().expect("address");
            (
                t.to_owned(),
                std::thread::spawn(move || reachable(to, udp, timeout)),
            )
        })
        .collect();
    let result: BTreeMap<String, bool> = probes
        .into_iter()
        .map(|(t, h)| (t, h.join().unwrap_or(false)))
        .collect();
    println!("{}", serde_json::to_string(&result).expect("json"));
}

fn reachable(to: SocketAddr, udp: bool, timeout: Duration) -> bool {
    if udp {
        let Ok(sock) = UdpSocket::bind(("0.0.0.0", 0)) else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(timeout / 3));
        let mut buf = [0u8; 256];
        // Datagrams may be lost: a few tries within the timeout.
        for _ in 0..3 {
            if sock.send_to(b"ping\n", to).is_err() {
                return false;
            }
            if sock.recv_from(&mut buf).is_ok_and(|(n, _)| n > 0) {
                return true;
            }
        }
        false
    } else {
        let Ok(mut conn) = TcpStream::connect_timeout(&to, timeout) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(timeout));
        if conn.write_all(b"ping\n").is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line).is_ok_and(|n| n > 0)
    }
}

fn request_tcp(to: SocketAddr, source_port: Option<u16>) -> Result<(String, bool), String> {
    let conn = match source_port {
        None => TcpStream::connect_timeout(&to, Duration::from_secs(2)),
        Some(port) => connect_from(port, to),
    }
    .map_err(|e| kind(&e))?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let peer_ok = conn.peer_addr().is_ok_and(|p| p == to);
    (&conn).write_all(b"hi\n").map_err(|e| kind(&e))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).map_err(|e| kind(&e))?;
    if line.is_empty() {
        return Err("closed".into());
    }
    Ok((line.trim().to_owned(), peer_ok))
}

/// A TCP connection to `to` from local port `port`.
fn connect_from(port: u16, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

fn request_udp(to: SocketAddr) -> Result<(String, bool), String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| kind(&e))?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).ok();
    sock.send_to(b"hi", to).map_err(|e| kind(&e))?;
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).map_err(|e| kind(&e))?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from == to))
}

fn kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}

fn hits(to: SocketAddr, count: usize, udp: bool, source_port: Option<u16>) {
    println!("{}", hits_json(to, count, udp, source_port));
}

/// `hits`' JSON: answers by server name, failures by kind.
fn hits_json(to: SocketAddr, count: usize, udp: bool, source_port: Option<u16>) -> serde_json::Value {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatch = 0;
    for _ in 0..count {
        match if udp {
            request_udp(to)
        } else {
            request_tcp(to, source_port)
        } {
            Ok((name, peer_ok)) => {
                *names.entry(name).or_default() += 1;
                mismatch += usize::from(!peer_ok);
            }
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    serde_json::json!({"names": names, "errors": errors, "peer_mismatch": mismatch})
}

fn count(port: u16, seconds: f64) {
    let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind UDP");
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut buf = [0u8; 1500];
    let mut n = 0;
    while let Some(left) = end
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        sock.set_read_timeout(Some(left)).ok();
        if sock.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    println!("{}", serde_json::json!({ "count": n }));
}

/// The VXLAN datagram (RFC 7348) around an Ethernet + IPv4 + UDP frame.
fn vxlan_frame(vni: u32, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x08, 0, 0, 0];
    f.extend_from_slice(&(vni << 8).to_be_bytes());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    f.extend_from_slice(&ipv4_udp(src, dst, payload));
    f
}

/// An IPv4 + UDP datagram (header checksum set, UDP checksum 0).
fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !((folded & 0xffff) + (folded >> 16)) as u16;
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    ip.extend_from_slice(&src.port().to_be_bytes());
    ip.extend_from_slice(&dst.port().to_be_bytes());
    ip.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    ip
}

fn udp_send(from: std::net::IpAddr, to: SocketAddr, count: usize) {
    let sock = UdpSocket::bind((from, 0)).expect("bind UDP to the source address");
    let mut sent = 0;
    for _ in 0..count {
        sent += usize::from(sock.send_to(b"spoofed\n", to).is_ok());
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{}", serde_json::json!({ "sent": sent }));
}

fn vxlan_send(
    to: SocketAddrV4,
    vni: u32,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    count: usize,
    outer_src: Option<std::net::Ipv4Addr>,
) {
    let frame = vxlan_frame(vni, src, dst, b"forged\n");
    let send: Box<dyn Fn() -> bool> = match outer_src {
        None => {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind UDP");
            Box::new(move || sock.send_to(&frame, to).is_ok())
        }
        Some(outer) => {
            // IPPROTO_RAW: the datagram goes out with the IP header written
            // here, source included (the kernel fills in the checksum).
            let sock = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(255)),
            )
            .expect("a raw socket");
            let datagram = ipv4_udp(SocketAddrV4::new(outer, 40999), to, &frame);
            Box::new(move || sock.send_to(&datagram, &SocketAddr::V4(to).into()).is_ok())
        }
    };
    let mut sent = 0;
    for _ in 0..count {
        sent += usize::from(send());
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{}", serde_json::json!({ "sent": sent }));
}

fn hold(to: SocketAddr, seconds: f64) {
    let conn = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0;
    println!("connected");
    while Instant::now() < end {
        let mut line = String::new();
        let ok = (&conn).write_all(b"ping\n").is_ok() && reader.read_line(&mut line).is_ok_and(|r| r > 0);
        if !ok {
            println!("failed after {n} exchanges");
            std::process::exit(1);
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("ok {n} exchanges");
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn crr(to: SocketAddr, seconds: f64, pause_ms: u64, stop_file: Option<String>) {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: Vec<(f64, String)> = Vec::new();
    let start = Instant::now();
    let stopped = || {
        stop_file
            .as_ref()
            .is_some_and(|f| std::path::Path::new(f).exists())
    };
    while Instant::now() < end && !stopped() {
        let at = knit_testkit::unix_seconds();
        match request_tcp(to, None) {
            Ok(_) => ok += 1,
            Err(e) => {
                failed += 1;
                if failures.len() < 20 {
                    failures.push((at, e.clone()));
                }
                *errors.entry(e).or_default() += 1;
            }
        }
        if pause_ms > 0 {
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
    }
    let rate = ok as f64 / start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"connections_per_sec": rate, "ok": ok, "failed": failed, "errors": errors, "failures": failures})
    );
}

fn rr(to: SocketAddr, seconds: f64) {
    let conn = TcpStream::connect(to).expect("connect");
    conn.set_nodelay(true).ok();
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut lat = Vec::new();
    let mut line = String::new();
    while Instant::now() < end {
        let t = Instant::now();
        (&conn).write_all(b"x\n").expect("write");
        line.clear();
        reader.read_line(&mut line).expect("read");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    println!(
        "{}",
        serde_json::json!({"requests": lat.len(), "p50_us": percentile(&lat, 0.5) as f64 / 1000.0, "p99_us": percentile(&lat, 0.99) as f64 / 1000.0})
    );
}
