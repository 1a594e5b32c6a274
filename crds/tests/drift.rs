//! The committed `crds/*.yaml` must be exactly what the Rust types generate.

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, yaml) in knit_crds::crd_manifests().unwrap() {
        let committed = std::fs::read_to_string(dir.join(&file))
            .unwrap_or_else(|e| panic!("crds/{file} is missing ({e}); run `make crds`"));
        assert!(
            committed == yaml,
            "crds/{file} drifted from the Rust types; run `make crds` and commit it"
        );
    }
}
