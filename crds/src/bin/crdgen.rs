//! Writes the CRD manifests to `crds/` and their kustomize bases
//! (`config/crd/`, `config/mcs/crd/`), or with `--check` exits non-zero
//! when the committed files differ from what the Rust types generate.

fn main() -> anyhow::Result<()> {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(_) => {
            println!("usage: crdgen [--check]");
            return Ok(());
        }
    };
    let mut drifted = Vec::new();
    for (path, yaml) in knit_crds::manifest_files()? {
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                drifted.push(path.display().to_string());
            }
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
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
