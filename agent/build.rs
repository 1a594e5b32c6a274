//! Builds the datapath: `ebpf/knit.bpf.c` with clang for the BPF target
//! (with BTF, `-g`, which aya needs for the map definitions). The layouts
//! it shares with user space are checked in `knit-datapath-common`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR")).join("../ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    for file in ["knit.bpf.c", "knit.h"] {
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
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install clang, libbpf-dev: make setup)"));
    assert!(status.success(), "{cmd:?} failed");
}
