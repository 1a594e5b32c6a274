//! Who already holds the tunnel's UDP port on this node. flannel (k3s's
//! default) and Cilium in VXLAN mode own UDP 8472, the Linux default Knit
//! uses too; a second VXLAN device cannot bind it. Before creating its
//! device the agent asks [`owner`]: another VXLAN device on the port
//! (found over rtnetlink by [`crate::netdev::NetDevices`]), or a socket
//! bound to it (`/proc/net/udp`, `/proc/net/udp6` of the agent's network
//! namespace, its process found by the socket's inode under `/proc/*/fd`).
//! Parsing is pure ([`bound_inodes`]); the agent then fails at once with an
//! error that names the owner and `tunnelPort`.

use std::path::Path;

/// Inodes of the sockets in a `/proc/net/udp{,6}` table bound to local
/// `port` (0 for a kernel socket, which has no inode).
pub fn bound_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let bound = u16::from_str_radix(hex_port, 16).ok()?;
            (bound == port).then(|| cols.get(9)?.parse().ok())?
        })
        .collect()
}

/// The process holding the socket with `inode`, as `comm (pid N)`.
fn process_of(proc_root: &Path, inode: u64) -> Option<String> {
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir(proc_root).ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()) {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(format!("{} (pid {pid})", comm.trim()));
            }
        }
    }
    None
}

/// What holds UDP `port` through a socket in this network namespace, in
/// words, or `None` when nothing does.
pub fn socket_owner(port: u16) -> Option<String> {
    let proc_root = Path::new("/proc");
    let mut inodes = Vec::new();
    for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(bound_inodes(&text, port));
        }
    }
    let inode = *inodes.first()?;
    Some(match inode {
        0 => "a kernel socket (a tunnel device of another network namespace's owner, or a fou/gue port)"
            .to_owned(),
        inode => process_of(proc_root, inode)
            .unwrap_or_else(|| format!("a socket (inode {inode}) of a process not visible here")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  219: 00000000:2118 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0
  480: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 33411 2 0000000000000000 0
  481: 00000000:2119 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41234 2 0000000000000000 0
";

    #[test]
    fn finds_the_sockets_bound_to_a_port() {
        assert_eq!(bound_inodes(UDP, 8472), vec![0], "flannel.1's kernel socket");
        assert_eq!(bound_inodes(UDP, 8473), vec![41234]);
        assert_eq!(bound_inodes(UDP, 53), vec![33411]);
        assert!(bound_inodes(UDP, 4789).is_empty());
        assert!(bound_inodes("garbage\nmore garbage", 8472).is_empty());
    }

    #[test]
    fn names_this_process_for_its_own_socket() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let owner = socket_owner(port).expect("an owner");
        assert!(owner.contains(&format!("pid {}", std::process::id())), "{owner}");
    }
}
