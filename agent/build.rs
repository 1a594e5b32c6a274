//! Builds the datapath: `ebpf/knit.bpf.c` with clang for the BPF target
//! (with BTF, `-g`, which aya needs for the map definitions), and the
//! layout probe `ebpf/layout.c` with the host compiler, whose output a test
//! compares with the Rust map types.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    for file in ["knit.bpf.c", "knit.h", "layout.c"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64",
        Ok("aarch64") => "aarch64",
        Ok(other) => panic!("unsupported target architecture {other}"),
        Err(_) => "x86_64",
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    run(Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{arch}-linux-gnu"))
        .arg("-c")
        .arg(root.join("knit.bpf.c"))
        .arg("-o")
        .arg(out.join("knit.bpf.o")));

    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let probe = out.join("layout-probe");
    run(Command::new(&cc).arg(root.join("layout.c")).arg("-o").arg(&probe));
    let printed = Command::new(&probe).output().expect("run the layout probe");
    assert!(printed.status.success(), "layout probe failed");
    std::fs::write(out.join("c_layout.txt"), printed.stdout).expect("write c_layout.txt");
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install clang, libbpf-dev: make setup)"));
    assert!(status.success(), "{cmd:?} failed");
}
