//! Writes the CRD manifests to a directory (default `crds/`), or with
//! `--check` exits non-zero when the committed files differ.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut check = false;
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR")));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]   (DIR defaults to the crds/ directory)");
                return Ok(());
            }
            other => dir = PathBuf::from(other),
        }
    }
    let mut drifted = Vec::new();
    for (file, yaml) in knit_crds::crd_manifests()? {
        let path = dir.join(&file);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                drifted.push(path.display().to_string());
            }
        } else {
            std::fs::write(&path, yaml)?;
            println!("wrote {}", path.display());
        }
    }
    if !drifted.is_empty() {
        anyhow::bail!(
            "CRD manifests drifted from the Rust types: {drifted:?}; run `make crds` and commit the result"
        );
    }
    Ok(())
}
