//! The committed `crds/*.yaml` and `config/crd/*.yaml` must be exactly what
//! the Rust types generate.

#[test]
fn committed_crd_yaml_matches_the_types() {
    for dir in knit_crds::manifest_dirs() {
        for (file, yaml) in knit_crds::crd_manifests().unwrap() {
            let path = dir.join(&file);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
            assert!(
                committed == yaml,
                "{} drifted from the Rust types; run `make crds` and commit it",
                path.display()
            );
        }
    }
}
