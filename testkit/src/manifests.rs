//! Kubernetes YAML for directory sources: nodes, pods, global services.

/// A Node with an InternalIP and a pod CIDR.
pub fn node(name: &str, ip: &str, pod_cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [{pod_cidr}]\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n---\n"
    )
}

/// A running Pod with one IP and an `app` label.
pub fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: x\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n---\n"
    )
}

/// A ClusterIP Service on TCP `port` with an EndpointSlice of `backends`,
/// and a GlobalServicePolicy selecting it with `export`.
pub fn global_service(ns: &str, name: &str, port: u16, backends: &[&str], export: bool) -> String {
    let endpoints: String = backends
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n  conditions:\n    ready: true\n"))
        .collect();
    let endpoints = if endpoints.is_empty() {
        "[]\n".to_owned()
    } else {
        format!("\n{endpoints}")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  ports:\n  - name: http\n    port: {port}\n    protocol: TCP\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: {port}\n  protocol: TCP\nendpoints: {endpoints}---\n\
         apiVersion: knit.dev/v1alpha1\nkind: GlobalServicePolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  services: [{name}]\n  export: {export}\n---\n"
    )
}
