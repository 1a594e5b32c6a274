//! The node's WireGuard interface ([`WireguardDevice`]): the kernel's where
//! it has WireGuard ([`super::kernel`]), else a userspace one, boringtun on
//! a TUN device (Cilium falls back the same way, to wireguard-go). Both
//! take the same transactions ([`super::uapi`]).
//!
//! The device is made in the calling thread's network namespace, and its
//! worker threads stay there. It is configured over a socket pair, one end
//! given to boringtun at start, with the text of [`super::uapi`], so two
//! devices never meet on a shared socket path (`/var/run/wireguard`), and
//! closing the agent's end stops the device.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::IntoRawFd as _;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use boringtun::device::{DeviceConfig, DeviceHandle};

use super::uapi::{self, DeviceState};
use crate::{Error, Result};

/// A running userspace WireGuard interface.
pub struct UserspaceDevice {
    name: String,
    control: Mutex<BufReader<UnixStream>>,
    _handle: DeviceHandle,
}

impl std::fmt::Debug for UserspaceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceDevice")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UserspaceDevice {
    /// Makes the TUN interface `name` (down, no address) and starts
    /// `threads` workers on it.
    pub fn start(name: &str, threads: usize) -> Result<Self> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| Error::Wireguard {
            action: format!("make the control socket of WireGuard interface {name}"),
            source: Box::new(e),
        })?;
        let config = DeviceConfig {
            n_threads: threads.max(1),
            use_connected_socket: true,
            use_multi_queue: threads > 1,
            uapi_fd: theirs.into_raw_fd(),
        };
        let handle = DeviceHandle::new(name, config).map_err(|e| Error::Wireguard {
            action: format!("start userspace WireGuard interface {name} (needs /dev/net/tun)"),
            source: Box::new(e),
        })?;
        Ok(Self {
            name: name.to_owned(),
            control: Mutex::new(BufReader::new(ours)),
            _handle: handle,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one `set=1` transaction and waits for its answer.
    pub fn set(&self, transaction: &str) -> Result<()> {
        let answer = self.exchange(transaction)?;
        uapi::parse_errno(&answer).map_err(|errno| Error::Wireguard {
            action: format!(
                "configure WireGuard interface {}: it answered errno={errno} to {:?}",
                self.name,
                redact(transaction)
            ),
            source: Box::new(std::io::Error::from_raw_os_error(errno.max(0))),
        })
    }

    /// The interface's own key and port, and each peer's handshake and
    /// byte counts (boringtun gives the time since the last handshake).
    pub fn state(&self) -> Result<DeviceState> {
        let answer = self.exchange("get=1\n\n")?;
        uapi::parse_get(&answer).map_err(|why| Error::Wireguard {
            action: format!("read WireGuard interface {}'s state", self.name),
            source: why.into(),
        })
    }

    fn exchange(&self, text: &str) -> Result<String> {
        let failed = |e: std::io::Error| Error::Wireguard {
            action: format!("talk to WireGuard interface {}", self.name),
            source: Box::new(e),
        };
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        control.get_mut().write_all(text.as_bytes()).map_err(failed)?;
        let mut answer = String::new();
        loop {
            let mut line = String::new();
            if control.read_line(&mut line).map_err(failed)? == 0 {
                return Err(failed(std::io::ErrorKind::UnexpectedEof.into()));
            }
            if line == "\n" {
                return Ok(answer);
            }
            answer.push_str(&line);
        }
    }
}

/// A transaction with its private key left out, for error messages.
fn redact(transaction: &str) -> String {
    transaction
        .lines()
        .map(|l| {
            if l.starts_with("private_key=") {
                "private_key=(hidden)"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The node's WireGuard interface, kernel or userspace.
#[derive(Debug)]
pub enum WireguardDevice {
    /// The kernel's WireGuard, over generic netlink.
    Kernel(super::kernel::KernelDevice),
    /// boringtun on TUN.
    Userspace(UserspaceDevice),
}

impl WireguardDevice {
    /// Runs one `set=1` transaction.
    pub fn set(&self, transaction: &str) -> Result<()> {
        match self {
            Self::Kernel(d) => d.set(transaction),
            Self::Userspace(d) => d.set(transaction),
        }
    }

    /// The interface's state.
    pub fn state(&self) -> Result<DeviceState> {
        match self {
            Self::Kernel(d) => d.state(),
            Self::Userspace(d) => d.state(),
        }
    }

    /// `kernel` or `userspace`.
    pub fn path(&self) -> &'static str {
        match self {
            Self::Kernel(_) => "kernel",
            Self::Userspace(_) => "userspace",
        }
    }
}
