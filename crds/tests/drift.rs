//! The committed `crds/*.yaml`, `config/crd/*.yaml` and
//! `config/mcs/crd/*.yaml` must be exactly what the Rust types generate, and
//! the MCS CRDs keep upstream's list types, short names and columns.

#[test]
fn committed_crd_yaml_matches_the_types() {
    for (path, yaml) in knit_crds::manifest_files().unwrap() {
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
        assert!(
            committed == yaml,
            "{} drifted from the Rust types; run `make crds` and commit it",
            path.display()
        );
    }
}

#[test]
fn the_mcs_crds_have_upstreams_shape() {
    let files = knit_crds::manifest_files().unwrap();
    let doc = |name: &str| -> serde_json::Value {
        let (_, yaml) = files
            .iter()
            .find(|(p, _)| p.ends_with(format!("config/mcs/crd/{name}")))
            .unwrap_or_else(|| panic!("{name} is not in config/mcs/crd"));
        serde_saphyr::from_str(yaml).unwrap()
    };
    let import = doc("serviceimports.yaml");
    assert_eq!(
        import["spec"]["names"]["shortNames"],
        serde_json::json!(["svcim"])
    );
    let version = &import["spec"]["versions"][0];
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Type", "IP", "Age"]);
    let schema = &version["schema"]["openAPIV3Schema"]["properties"];
    assert_eq!(
        schema["status"]["properties"]["clusters"]["x-kubernetes-list-type"],
        "map"
    );
    assert_eq!(
        schema["status"]["properties"]["clusters"]["x-kubernetes-list-map-keys"],
        serde_json::json!(["cluster"])
    );
    assert_eq!(
        schema["spec"]["properties"]["ports"]["x-kubernetes-list-type"],
        "atomic"
    );

    let export = doc("serviceexports.yaml");
    assert_eq!(
        export["spec"]["names"]["shortNames"],
        serde_json::json!(["svcex"])
    );
    let conditions = &export["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(
        conditions["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    assert!(
        !files
            .iter()
            .any(|(p, _)| p.ends_with("config/crd/serviceimports.yaml")),
        "config/default must not install the MCS CRDs"
    );
}
