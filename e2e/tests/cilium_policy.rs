//! Cilium users' policies on the local mesh: the user's
//! CiliumNetworkPolicy, as written, admits `app=frontend` of cluster-a to
//! the backend and nothing else (not cluster-b's frontend, not a pod of
//! cluster-b that labels itself `io.cilium.k8s.policy.cluster: cluster-a`,
//! not another pod of cluster-a); a policy outside Knit's L3/L4 subset (an L7 rule) is not
//! applied at all, and `knitctl status` names it and the field; an
//! `ingressDeny` rule wins over an allow-all rule of the same policy.

use std::time::Duration;

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

const USERS_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-cross-cluster, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: cluster-a}
";

const L7_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-only, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: other}}
  ingress:
  - toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules: {http: [{method: GET}]}
";

const DENY_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-not-from-other, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: other}}]
";

#[test]
fn the_users_cilium_policy_works_as_written_and_l7_is_rejected_whole() {
    let mut mesh = LocalMesh::start(MeshOptions {
        nodes: 1,
        ..MeshOptions::default()
    });
    let backend = mesh.add_pod(A.node(0), "production", "backend", &[("app", "backend")]);
    let frontend_a = mesh.add_pod(A.node(0), "production", "frontend-a", &[("app", "frontend")]);
    let other_a = mesh.add_pod(A.node(0), "production", "other", &[("app", "other")]);
    let frontend_b = mesh.add_pod(B.node(0), "production", "frontend-b", &[("app", "frontend")]);
    let spoof_b = mesh.add_pod(
        B.node(0),
        "production",
        "spoof",
        &[("app", "frontend"), ("io.cilium.k8s.policy.cluster", "cluster-a")],
    );
    let backend_ip = mesh.pod(backend).ip;
    for client in [frontend_a, other_a, frontend_b, spoof_b] {
        mesh.wait_for_hits("open access before any policy", client, backend_ip, false, |h| {
            h.total() == 40
        });
    }
    mesh.write_manifest(A, "cnp.yaml", USERS_POLICY);
    // A refused request costs its connect timeout: probe with few.
    for (what, client) in [
        ("cluster-b's frontend refused", frontend_b),
        ("cluster-b's pod claiming cluster-a refused", spoof_b),
        ("another pod of cluster-a refused", other_a),
    ] {
        mesh.wait_until(what, Duration::from_secs(30), || {
            mesh.hits(client, backend_ip, 2, false).total() == 0
        });
    }
    let allowed = mesh.hits(frontend_a, backend_ip, 40, false);
    assert_eq!(allowed.total(), 40, "cluster-a's frontend admitted: {allowed:?}");

    // An L7 rule: the whole policy is not applied, says why, and fails
    // closed: the pods it selects are isolated where it has rules (before,
    // they stayed open to everyone).
    mesh.write_manifest(A, "cnp-l7.yaml", L7_POLICY);
    mesh.wait_until(
        "the agent's report (knitctl status -o json) to name the rejected policy",
        Duration::from_secs(30),
        || {
            mesh.status_report(A).is_some_and(|r| {
                r.nodes.iter().any(|n| {
                    n.rejected_policies.iter().any(|p| {
                        p.starts_with("CiliumNetworkPolicy production/l7-only not applied: field rules is not supported")
                    })
                })
            })
        },
    );
    let other_ip = mesh.pod(other_a).ip;
    mesh.wait_until(
        "the rejected policy to isolate app=other",
        Duration::from_secs(30),
        || mesh.hits(frontend_a, other_ip, 2, false).total() == 0,
    );
    let out = mesh.hits(other_a, mesh.pod(frontend_a).ip, 5, false);
    assert_eq!(
        out.total(),
        5,
        "it has no egress rules: app=other still reaches out: {out:?}"
    );
    assert!(mesh.agent_metric(A.node(0), "knit_agent_rejected_cilium_policies") >= 1);

    // Deny wins: everyone is allowed into the frontend but `app=other`.
    let frontend_ip = mesh.pod(frontend_a).ip;
    mesh.write_manifest(A, "cnp-deny.yaml", DENY_POLICY);
    mesh.wait_until("app=other denied by ingressDeny", Duration::from_secs(30), || {
        mesh.hits(other_a, frontend_ip, 2, false).total() == 0
    });
    for (what, client) in [("cluster-b's frontend", frontend_b), ("the backend", backend)] {
        let hits = mesh.hits(client, frontend_ip, 20, false);
        assert_eq!(
            hits.total(),
            20,
            "{what} still allowed by fromEntities all: {hits:?}"
        );
    }
}
