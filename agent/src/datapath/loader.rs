//! Loads `knit.bpf.o` into the kernel and attaches it, so that everything
//! survives the agent: maps are pinned by name under `<pin dir>/maps`, and
//! every attachment is kept under `<pin dir>/links` (a pinned BPF link, or
//! for tc on kernels without TCX the record of a netlink filter, see
//! [`tc`]).
//!
//! On start, a tc attachment has its program swapped atomically, so
//! traffic never runs without a program; cgroup
//! links get the new program attached next to the old one, after which the
//! old link's pin is removed (the socket programs are idempotent, so
//! running both for a moment is harmless).

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use knit_datapath_common::TC_PROGRAMS;

use super::tc::{self, TcAttach, TcMode};
use crate::{Error, Result};

/// The compiled datapath.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/knit.bpf.o"));

/// Socket programs and where they hook.
pub const SOCKET_PROGRAMS: [&str; 4] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
];

/// Loaded programs and their maps.
pub struct Loaded {
    /// The object (maps are taken out of it by the writer).
    pub ebpf: Ebpf,
    pin_dir: PathBuf,
    tc_mode: TcMode,
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn pin_err(action: &str) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Pin {
        action: action.to_owned(),
        source,
    }
}

/// Loads every program, reusing maps already pinned in `pin_dir`; tc
/// programs will attach the way `tc_attach` resolves to on this kernel.
pub fn load(pin_dir: &Path, tc_attach: TcAttach) -> Result<Loaded> {
    super::features::check()?;
    let tc_mode = tc_attach.resolve()?;
    let maps = pin_dir.join("maps");
    std::fs::create_dir_all(&maps).map_err(pin_err("create the map pin directory"))?;
    std::fs::create_dir_all(links_dir(pin_dir)).map_err(pin_err("create the link pin directory"))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps)
        .load(OBJECT)
        .map_err(|e| Error::Load(Box::new(e)))?;
    for name in TC_PROGRAMS {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
        verify(|| prog.load()).map_err(|e| Error::program(name, e))?;
    }
    for name in SOCKET_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
        verify(|| prog.load()).map_err(|e| Error::program(name, e))?;
    }
    Ok(Loaded {
        ebpf,
        pin_dir: pin_dir.to_owned(),
        tc_mode,
    })
}

/// Times `BPF_PROG_LOAD` is tried while the kernel answers `EAGAIN`
/// (libbpf's `PROG_LOAD_ATTEMPTS`).
const LOAD_ATTEMPTS: usize = 5;

/// Runs `load` (a program's `load`) with every signal blocked on this
/// thread, and again while the verifier answers `EAGAIN`, up to
/// [`LOAD_ATTEMPTS`] times. The verifier gives up with `EAGAIN` whenever a
/// signal is pending for the loading thread (the `SIGCHLD` of an exiting
/// child, which tokio catches, say). With 4 threads signalling the
/// process, 2 to 4 of 20 loads failed so, and 1 of 20 still did with
/// libbpf's 5 retries alone (aya retries only once, to fetch the log).
/// Blocked, a signal goes to another thread or waits for the load.
pub fn verify(
    mut load: impl FnMut() -> std::result::Result<(), aya::programs::ProgramError>,
) -> std::result::Result<(), aya::programs::ProgramError> {
    let _blocked = SignalsBlocked::new();
    let mut attempt = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(nix::errno::Errno::EAGAIN as i32)
                    && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Every signal blocked on this thread until dropped, when the thread's
/// mask before is put back.
struct SignalsBlocked(Option<nix::sys::signal::SigSet>);

impl SignalsBlocked {
    fn new() -> Self {
        use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
        let mut before = SigSet::empty();
        let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut before));
        if let Err(e) = blocked {
            tracing::debug!(error = %e, "cannot block signals while the verifier runs");
        }
        Self(blocked.ok().map(|()| before))
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        use nix::sys::signal::{SigmaskHow, pthread_sigmask};
        if let Some(before) = &self.0 {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(before), None);
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::MissingProgram(name.to_owned()))?;
    prog.try_into().map_err(|e| Error::program(name, e))
}

impl Loaded {
    fn link_path(&self, name: &str) -> PathBuf {
        links_dir(&self.pin_dir).join(name)
    }

    /// Attaches `program` to tc `direction` of `interface` as `link_name`
    /// in this node's tc mode ([`tc`]), replacing the program of the
    /// attachment of that name if there is one.
    pub fn attach_tc(
        &mut self,
        program_name: &str,
        interface: &str,
        direction: TcAttachType,
        link_name: &str,
    ) -> Result<()> {
        let links = links_dir(&self.pin_dir);
        let mode = self.tc_mode;
        let prog: &mut SchedClassifier = program(&mut self.ebpf, program_name)?;
        tc::attach(prog, mode, &links, interface, direction, link_name)
    }

    /// The way tc programs are attached.
    pub fn tc_mode(&self) -> TcMode {
        self.tc_mode
    }

    /// Removes the attachment `link_name` (detaching its program).
    pub fn detach(&self, link_name: &str) -> Result<()> {
        tc::detach(&links_dir(&self.pin_dir), link_name)
    }

    /// Names of the pinned links.
    pub fn pinned_links(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(links_dir(&self.pin_dir)).map_err(pin_err("list link pins"))? {
            let entry = entry.map_err(pin_err("list link pins"))?;
            names.push(tc::link_name(&entry.file_name().to_string_lossy()).to_owned());
        }
        Ok(names)
    }

    /// Attaches the socket programs to the cgroup v2 directory `cgroup`.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup).map_err(pin_err("open the pod cgroup"))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let old = self.pinned_links()?;
        for name in SOCKET_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let id = prog
                .attach(dir.as_fd(), CgroupAttachMode::Single)
                .map_err(|e| Error::program(name, e))?;
            let link = prog.take_link(id).map_err(|e| Error::program(name, e))?;
            let fd: FdLink = link.try_into().map_err(|e| Error::Link {
                action: format!("pin the {name} link"),
                source: Box::new(e),
            })?;
            fd.pin(self.link_path(&format!("cgroup-{name}-{stamp}")))
                .map_err(|e| Error::Link {
                    action: format!("pin the {name} link"),
                    source: Box::new(e),
                })?;
        }
        for name in old.iter().filter(|n| n.starts_with("cgroup-")) {
            match std::fs::remove_file(self.link_path(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(pin_err("remove a link pin")(e)),
                _ => {}
            }
        }
        Ok(())
    }
}
