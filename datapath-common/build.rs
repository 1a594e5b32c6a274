//! Builds the layout probe `ebpf/layout.c` with the host compiler and keeps
//! its output (sizes, offsets, enum values and flags of `ebpf/knit.h`) for
//! the test that compares them with the Rust definitions.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    for file in ["knit.h", "layout.c"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let probe = out.join("layout-probe");
    let status = Command::new(&cc)
        .arg(root.join("layout.c"))
        .arg("-o")
        .arg(&probe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e} (install a C compiler: scripts/setup.sh)"));
    assert!(status.success(), "compiling the layout probe failed");
    let printed = Command::new(&probe).output().expect("run the layout probe");
    assert!(printed.status.success(), "layout probe failed");
    std::fs::write(out.join("c_layout.txt"), printed.stdout).expect("write c_layout.txt");
}
