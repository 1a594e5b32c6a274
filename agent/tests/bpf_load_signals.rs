//! Loading the datapath while signals arrive. The kernel's verifier gives
//! up with `EAGAIN` when a signal is pending for the loading thread; the
//! agent (a tokio process whose children's `SIGCHLD` it catches) and the
//! BPF tests then failed a load now and then ("verifier refused from_pod:
//! ... Resource temporarily unavailable"). Here 4 threads signal the
//! process without pause while the programs are loaded 20 times: every
//! load must succeed. Loaded without `loader::verify` (which blocks the
//! thread's signals while the verifier runs), 2 to 4 of 20 failed in this
//! storm, and 1 of 20 still did with libbpf's 5 retries on `EAGAIN` alone.
//! In a binary of its own, since the handler it installs is process-wide.

mod bpf_harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bpf_harness::Programs;

#[test]
fn programs_load_while_signals_keep_arriving() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    // A caught signal is what interrupts the verifier (an ignored one is
    // never pending): catch SIGCHLD as the agent's runtime does.
    let _caught = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).expect("catch SIGCHLD")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let pid = std::process::id().to_string();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, pid) = (stop.clone(), pid.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::process::Command::new("kill").args(["-CHLD", &pid]).status();
                }
            })
        })
        .collect();
    let loads: Vec<_> = (0..20)
        .map(|i| std::panic::catch_unwind(|| drop(Programs::load(&format!("signals{i}")))))
        .collect();
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().expect("a signalling thread");
    }
    let failed = loads.iter().filter(|l| l.is_err()).count();
    assert_eq!(failed, 0, "{failed} of 20 loads failed while signals arrived");
}
