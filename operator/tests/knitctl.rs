//! `knitctl render` and `knitctl peer export` as a user runs them: two
//! clusters exchange peer manifests and render their configs to disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use knit_crds::ClusterMeshPeer;
use knit_kvstore::EtcdClientConfig;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("knitctl-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn knitctl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_knitctl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "knitctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(config: &Path, peers: &Path, out: &Path) {
    knitctl(&[
        "render",
        "--config",
        s(config),
        "--peers",
        s(peers),
        "--out",
        s(out),
    ]);
}

fn site(root: &Path, name: &str, id: u16) -> (PathBuf, PathBuf, PathBuf) {
    let config = root.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!("clusterName: {name}\nclusterID: {id}\npodCIDRs: [10.{id}.0.0/16]\napiserver:\n  externalAddresses: [10.99.0.{id}]\n"),
    )
    .unwrap();
    let peers = root.join(format!("{name}-peers"));
    std::fs::create_dir_all(&peers).unwrap();
    (config, peers, root.join(format!("{name}-out")))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn two_sites_exchange_peer_manifests_and_render_each_other() {
    let tmp = TempDir::new("exchange");
    let (a_cfg, a_peers, a_out) = site(&tmp.0, "a", 1);
    let (b_cfg, b_peers, b_out) = site(&tmp.0, "b", 2);

    render(&a_cfg, &a_peers, &a_out);
    render(&b_cfg, &b_peers, &b_out);
    let a_ca = std::fs::read_to_string(a_out.join("knit-ca/ca.crt")).unwrap();
    assert_eq!(
        std::fs::read_to_string(a_out.join("knit-mesh-ca/ca.crt")).unwrap(),
        a_ca,
        "the public CA ConfigMap carries the CA certificate"
    );
    // Export needs only public data: it works with the CA Secret unreadable.
    std::fs::rename(a_out.join("knit-ca"), a_out.join("knit-ca.hidden")).unwrap();

    let a_manifest = knitctl(&["peer", "export", "--config", s(&a_cfg), "--pki-dir", s(&a_out)]);
    let b_manifest = knitctl(&["peer", "export", "--config", s(&b_cfg), "--pki-dir", s(&b_out)]);
    std::fs::rename(a_out.join("knit-ca.hidden"), a_out.join("knit-ca")).unwrap();
    let exported: ClusterMeshPeer = serde_saphyr::from_str(&a_manifest).unwrap();
    assert_eq!(exported.spec.cluster_name, "a");
    assert_eq!(exported.spec.cluster_id, 1);
    assert_eq!(
        exported.spec.endpoints,
        vec!["https://10.99.0.1:2480"],
        "peers are given the peer front's port"
    );
    assert_eq!(exported.spec.ca_bundle.as_deref(), Some(a_ca.as_str()));
    assert!(
        !a_manifest.contains("PRIVATE KEY"),
        "an export must carry public data only"
    );

    std::fs::write(b_peers.join("a.yaml"), &a_manifest).unwrap();
    std::fs::write(a_peers.join("b.yaml"), &b_manifest).unwrap();
    render(&b_cfg, &b_peers, &b_out);
    render(&a_cfg, &a_peers, &a_out);

    // b reaches a's peer front with a's CA and a certificate of its own
    // named remote-b; a's front accepts it because b's CA is b's, and
    // reaches a's etcd as remote-b with a certificate a's own CA issued.
    // a's etcd never trusts b's CA.
    let cfg = EtcdClientConfig::from_yaml(
        &std::fs::read_to_string(b_out.join("knit-peer-configs/a.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg.endpoints, vec!["https://10.99.0.1:2480"]);
    assert_eq!(
        std::fs::read_to_string(b_out.join("knit-peer-configs/a.ca.crt")).unwrap(),
        a_ca
    );
    let b_client = std::fs::read_to_string(b_out.join("knit-peer-configs/a.crt")).unwrap();
    let b_ca = std::fs::read_to_string(b_out.join("knit-ca/ca.crt")).unwrap();
    assert_eq!(
        knit_operator::pki::inspect(&b_client).unwrap().common_name,
        "remote-b"
    );
    assert!(knit_operator::pki::is_signed_by(&b_client, &b_ca));
    assert!(
        !std::fs::read_to_string(a_out.join("knit-trusted-client-cas/ca.crt"))
            .unwrap()
            .contains(&b_ca),
        "etcd trusts only the local CA"
    );
    let access = std::fs::read_to_string(a_out.join("knit-peer-access/b.crt")).unwrap();
    assert_eq!(
        knit_operator::pki::inspect(&access).unwrap().common_name,
        "remote-b"
    );
    let a_local_ca = std::fs::read_to_string(a_out.join("knit-local-ca/ca.crt")).unwrap();
    assert!(
        knit_operator::pki::is_signed_by(&access, &a_local_ca),
        "the front's certificate for b is issued by a's local CA"
    );
    assert!(!knit_operator::pki::is_signed_by(&access, &a_ca));
    let front = std::fs::read_to_string(a_out.join("knit-peer-front-cert/tls.crt")).unwrap();
    assert!(
        knit_operator::pki::is_signed_by(&front, &a_ca),
        "peers verify the front with a's mesh CA"
    );
    assert!(
        std::fs::read_to_string(a_out.join("knit-etcd-users/users.yaml"))
            .unwrap()
            .contains("remote-b")
    );
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(b_out.join("knit-peer-configs/a.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    // Rendering again keeps every certificate.
    let before = std::fs::read_to_string(a_out.join("knit-apiserver-server-cert/tls.crt")).unwrap();
    render(&a_cfg, &a_peers, &a_out);
    assert_eq!(
        before,
        std::fs::read_to_string(a_out.join("knit-apiserver-server-cert/tls.crt")).unwrap()
    );

    // Removing the peer removes its files, trust and user.
    std::fs::remove_file(a_peers.join("b.yaml")).unwrap();
    render(&a_cfg, &a_peers, &a_out);
    assert!(!a_out.join("knit-peer-configs/b.yaml").exists());
    assert!(!a_out.join("knit-peer-configs/b.key").exists());
    assert!(!a_out.join("knit-peer-access/b.key").exists());
    assert!(
        !std::fs::read_to_string(a_out.join("knit-etcd-users/users.yaml"))
            .unwrap()
            .contains("remote-b")
    );
}

#[test]
fn a_bad_config_is_refused_naming_the_field() {
    let tmp = TempDir::new("badcfg");
    let cfg = tmp.0.join("bad.yaml");
    std::fs::write(&cfg, "clusterName: Cluster_A\nclusterID: 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_knitctl"))
        .args(["render", "--config", s(&cfg), "--out", s(&tmp.0.join("out"))])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clusterName") && err.contains("DNS label"), "{err}");
}
