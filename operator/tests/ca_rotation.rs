//! Rolling the mesh CA in steps (`certificates.meshCARotation`), and the
//! local CA that keeps etcd out of it: each step's certificates, what is
//! published, what every ClusterMeshPeer shows, and taking a step back.

mod common;

use common::*;
use knit_operator::config::{CaRotationStep, ClusterConfig};
use knit_operator::names;
use knit_operator::pki;
use knit_operator::render::MeshPlan;

/// Certificates peers see: the front's server certificate and our client
/// certificate for peer b.
const PEER_FACING: [(&str, &str); 2] = [
    (names::FRONT_CERT_SECRET, "tls.crt"),
    (names::PEER_CONFIGS_SECRET, "b.crt"),
];
/// Certificates only etcd and its local clients see.
const LOCAL: [(&str, &str); 4] = [
    (names::SERVER_CERT_SECRET, "tls.crt"),
    (names::ADMIN_CERT_SECRET, "tls.crt"),
    (names::LOCAL_CERT_SECRET, "tls.crt"),
    (names::PEER_ACCESS_SECRET, "b.crt"),
];

fn at_step(step: Option<CaRotationStep>) -> ClusterConfig {
    let mut config = config_a();
    config.certificates.mesh_ca_rotation = step;
    config
}

fn step(previous: &MeshPlan, step: Option<CaRotationStep>) -> MeshPlan {
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    render(&at_step(step), &[b], &stored(previous), t0())
}

fn text(plan: &MeshPlan, (secret, key): (&str, &str)) -> String {
    secret_text(plan, secret, key).unwrap()
}

fn published(plan: &MeshPlan) -> String {
    cm_text(plan, names::PUBLIC_CA_CONFIGMAP, "ca.crt").unwrap()
}

#[test]
fn a_roll_publishes_both_cas_then_switches_then_drops_the_old_one() {
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let start = render(&config_a(), &[b], &Default::default(), t0());
    let old = text(&start, (names::CA_SECRET, "ca.crt"));
    let idle = start.peer_statuses["b"].mesh_ca.clone().unwrap();
    assert_eq!(idle.rotation, None);
    assert_eq!(idle.published, pki::fingerprints(&old));
    assert!(idle.next_step.contains("Prepare"), "{}", idle.next_step);

    // 1. Prepare: the next CA exists and is published beside the current one;
    // nothing peers verify changes yet.
    let prepared = step(&start, Some(CaRotationStep::Prepare));
    let next = text(&prepared, (names::CA_SECRET, "next.crt"));
    assert_ne!(next, old);
    assert_eq!(text(&prepared, (names::CA_SECRET, "ca.crt")), old);
    assert_eq!(
        pki::fingerprints(&published(&prepared)),
        [
            pki::fingerprints(&old)[0].clone(),
            pki::fingerprints(&next)[0].clone()
        ]
    );
    for cert in PEER_FACING.into_iter().chain(LOCAL) {
        assert_eq!(
            text(&prepared, cert),
            text(&start, cert),
            "{cert:?} re-issued in Prepare"
        );
    }
    let status = prepared.peer_statuses["b"].mesh_ca.clone().unwrap();
    assert_eq!(status.rotation.as_deref(), Some("Prepare"));
    assert_eq!(status.published.len(), 2);
    assert_eq!(status.issuing, pki::fingerprints(&old).first().cloned());
    assert!(
        status.next_step.contains("knitctl peer export"),
        "{}",
        status.next_step
    );
    assert!(
        prepared
            .events
            .iter()
            .any(|e| e.reason == "CertificateIssued" && e.note.contains("next mesh CA")),
        "{:?}",
        prepared.events
    );
    // Rendering the same step again changes nothing.
    let again = step(&prepared, Some(CaRotationStep::Prepare));
    assert_eq!(text(&again, (names::CA_SECRET, "next.crt")), next);
    assert!(
        !again.events.iter().any(|e| e.reason == "CertificateIssued"),
        "{:?}",
        again.events
    );

    // 2. Switch: what peers verify is issued by the next CA; etcd's side
    // stays as it was, so etcd needs no restart.
    let switched = step(&prepared, Some(CaRotationStep::Switch));
    for cert in PEER_FACING {
        assert!(pki::is_signed_by(&text(&switched, cert), &next), "{cert:?}");
    }
    for cert in LOCAL {
        assert_eq!(
            text(&switched, cert),
            text(&start, cert),
            "{cert:?} re-issued in Switch"
        );
    }
    assert_eq!(published(&switched), published(&prepared));
    assert_eq!(trust_hash(&switched), trust_hash(&start));
    let status = switched.peer_statuses["b"].mesh_ca.clone().unwrap();
    assert_eq!(status.issuing, pki::fingerprints(&next).first().cloned());

    // 3. Complete: the next CA is the CA; the old one is no longer published;
    // nothing is issued again.
    let complete = step(&switched, Some(CaRotationStep::Complete));
    assert_eq!(text(&complete, (names::CA_SECRET, "ca.crt")), next);
    assert_eq!(secret_text(&complete, names::CA_SECRET, "next.crt"), None);
    assert_eq!(published(&complete), next);
    for cert in PEER_FACING.into_iter().chain(LOCAL) {
        assert_eq!(
            text(&complete, cert),
            text(&switched, cert),
            "{cert:?} re-issued in Complete"
        );
    }
    assert_eq!(trust_hash(&complete), trust_hash(&start));
    // Leaving the setting at Complete is stable; a later Prepare starts a new roll.
    let settled = step(&complete, Some(CaRotationStep::Complete));
    assert_eq!(published(&settled), next);
    let second = step(&settled, Some(CaRotationStep::Prepare));
    assert_eq!(pki::fingerprints(&published(&second)).len(), 2);
    assert_ne!(text(&second, (names::CA_SECRET, "next.crt")), next);
}

#[test]
fn a_roll_can_be_taken_back_before_it_completes() {
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let start = render(&config_a(), &[b], &Default::default(), t0());
    let old = text(&start, (names::CA_SECRET, "ca.crt"));
    let switched = step(
        &step(&start, Some(CaRotationStep::Prepare)),
        Some(CaRotationStep::Switch),
    );
    // Back to Prepare: peers verify the current CA's certificates again.
    let back = step(&switched, Some(CaRotationStep::Prepare));
    for cert in PEER_FACING {
        assert!(pki::is_signed_by(&text(&back, cert), &old), "{cert:?}");
    }
    // Unset: the next CA is gone and only the current CA is published.
    let aborted = step(&back, None);
    assert_eq!(secret_text(&aborted, names::CA_SECRET, "next.crt"), None);
    assert_eq!(published(&aborted), old);
    assert_eq!(
        aborted.peer_statuses["b"].mesh_ca.as_ref().unwrap().rotation,
        None
    );
}

#[test]
fn switch_without_a_prepared_ca_changes_nothing_and_says_why() {
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let start = render(&config_a(), &[b], &Default::default(), t0());
    let jumped = step(&start, Some(CaRotationStep::Switch));
    for cert in PEER_FACING.into_iter().chain(LOCAL) {
        assert_eq!(text(&jumped, cert), text(&start, cert));
    }
    assert_eq!(published(&jumped), published(&start));
    let status = jumped.peer_statuses["b"].mesh_ca.clone().unwrap();
    assert!(
        status.next_step.contains("set it to Prepare"),
        "{}",
        status.next_step
    );
    assert!(
        jumped
            .events
            .iter()
            .any(|e| e.warning && e.note.contains("no next mesh CA")),
        "{:?}",
        jumped.events
    );
}

#[test]
fn an_installation_with_one_ca_keeps_it_as_the_local_ca_and_reissues_nothing_local() {
    // Before the split one CA signed everything: make the stored state so.
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let fresh = render(&config_a(), std::slice::from_ref(&b), &Default::default(), t0());
    let mut old_install = stored(&fresh);
    let only_ca = old_install.remove(names::LOCAL_CA_SECRET).unwrap();
    old_install.insert(names::CA_SECRET.to_owned(), only_ca.clone());
    let upgraded = render(&config_a(), &[b], &old_install, t0());
    assert_eq!(
        text(&upgraded, (names::LOCAL_CA_SECRET, "ca.crt")),
        only_ca["ca.crt"]
    );
    assert_eq!(text(&upgraded, (names::CA_SECRET, "ca.crt")), only_ca["ca.crt"]);
    for cert in LOCAL {
        assert_eq!(
            text(&upgraded, cert),
            text(&fresh, cert),
            "{cert:?} re-issued on upgrade"
        );
    }
    assert_eq!(
        trust_hash(&upgraded),
        trust_hash(&fresh),
        "etcd restarted on upgrade"
    );
}

#[test]
fn each_peer_shows_the_fingerprints_of_the_cas_it_is_trusted_with() {
    let mut b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let b_next = pki::new_ca("b", t0(), 3650).unwrap();
    let bundle = format!("{}{}", b.ca.as_ref().unwrap(), b_next.cert_pem);
    b.spec.ca_bundle = Some(bundle.clone());
    b.ca = Ok(bundle.clone());
    let plan = render(&config_a(), &[b], &Default::default(), t0());
    assert_eq!(plan.peer_statuses["b"].peer_cas, pki::fingerprints(&bundle));
    assert_eq!(plan.peer_statuses["b"].peer_cas.len(), 2);
}

/// A roll step committed to git reaches the running operator: the kubelet
/// rewrites the mounted `config.yaml`, the operator notices and reconciles
/// with it. An invalid edit meanwhile is not taken (the running config
/// stays), and an image change in `knit-images` is a change like any other.
#[tokio::test]
async fn a_roll_step_written_to_the_mounted_config_takes_effect_without_a_restart() {
    use knit_operator::config_files::ConfigFiles;
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("knit-config-files-{}", std::process::id()));
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let base = "clusterName: a\nclusterID: 1\npodCIDRs: [10.1.0.0/16]\napiserver:\n  externalAddresses: [mesh.a.example.com]\n";
    std::fs::write(dir.join("config.yaml"), base).unwrap();
    std::fs::write(images.join("apiserver"), "ghcr.io/knit-dev/knit-apiserver:v0.1.0").unwrap();
    let files = ConfigFiles {
        config: dir.join("config.yaml"),
        images_dir: Some(images.clone()),
        namespace: None,
    };
    let running = files.load().unwrap();
    assert_eq!(running.config.certificates.mesh_ca_rotation, None);
    assert_eq!(
        running.config.images.apiserver,
        "ghcr.io/knit-dev/knit-apiserver:v0.1.0"
    );
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let start = render(
        &running.config,
        std::slice::from_ref(&b),
        &Default::default(),
        t0(),
    );

    let watcher = {
        let (files, running) = (files.clone(), running.clone());
        tokio::spawn(async move { files.next_change(&running, Duration::from_millis(20)).await })
    };
    std::fs::write(
        dir.join("config.yaml"),
        format!("{base}certificates:\n  meshCARotation: Prepared\n"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!watcher.is_finished(), "an invalid step (Prepared) is not taken");
    std::fs::write(
        dir.join("config.yaml"),
        format!("{base}certificates:\n  meshCARotation: Prepare\n"),
    )
    .unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the change is noticed")
        .unwrap();
    assert_eq!(
        changed.config.certificates.mesh_ca_rotation,
        Some(CaRotationStep::Prepare)
    );
    let prepared = render(&changed.config, &[b], &stored(&start), t0());
    assert!(
        secret_text(&prepared, names::CA_SECRET, "next.crt").is_some(),
        "the next CA exists once the operator reconciles with the new config"
    );

    let watcher = {
        let (files, changed) = (files.clone(), changed.clone());
        tokio::spawn(async move { files.next_change(&changed, Duration::from_millis(20)).await })
    };
    std::fs::write(
        images.join("apiserver"),
        "ghcr.io/knit-dev/knit-apiserver:v0.2.0\n",
    )
    .unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the image change is noticed")
        .unwrap();
    assert_eq!(
        changed.config.images.apiserver,
        "ghcr.io/knit-dev/knit-apiserver:v0.2.0"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
