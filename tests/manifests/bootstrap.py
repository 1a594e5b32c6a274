"""The order in which a first `kubectl apply -k config/default` comes up on
nodes without a CNI (docs/operator.md, "First install").

The kubelet mounts every volume of a pod before any of its containers runs,
init containers included. A pod whose volume or env names an object the
operator creates therefore waits for the operator, and the operator, like
every pod off the host network, waits for the pod network that the agent's
init container installs. So: every Secret/ConfigMap a pod of config/default
needs is either in config/default itself or marked `optional`, and the
agent runs on the host network and tolerates the taints of a node whose
network is not ready yet.
"""

POD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


def needed_objects(pod):
    """(kind, name, optional, where) of every Secret/ConfigMap the pod
    template needs before its containers run."""
    out = []
    for v in pod.get("volumes", []):
        if "secret" in v:
            out.append(("Secret", v["secret"]["secretName"], v["secret"].get("optional", False), f"volume {v['name']}"))
        if "configMap" in v:
            out.append(("ConfigMap", v["configMap"]["name"], v["configMap"].get("optional", False), f"volume {v['name']}"))
        for src in v.get("projected", {}).get("sources", []):
            for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                if key in src:
                    out.append((kind, src[key]["name"], src[key].get("optional", False), f"volume {v['name']}"))
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in ref:
                    out.append((kind, ref[key]["name"], ref[key].get("optional", False), f"{c['name']} env {e['name']}"))
        for src in c.get("envFrom", []):
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in src:
                    out.append((kind, src[key]["name"], src[key].get("optional", False), f"{c['name']} envFrom"))
    return out


def check_bootstrap(rendered):
    errors = []
    shipped = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    table = []
    for d in rendered:
        if d["kind"] not in POD_KINDS:
            continue
        pod = d["spec"]["template"]["spec"]
        workload = f"{d['kind']}/{d['metadata']['name']}"
        for kind, name, optional, where in needed_objects(pod):
            if (kind, name) in shipped:
                table.append(f"{workload}: {kind} {name} ({where}) ships with config/default")
            elif optional:
                table.append(f"{workload}: {kind} {name} ({where}) is optional: made later by knit-operator")
            else:
                errors.append(
                    f"{workload} needs {kind} {name} ({where}), which config/default does not create: "
                    "the kubelet would not start the pod until knit-operator (itself waiting for the pod "
                    "network) creates it; ship it or mark it optional"
                )
    ds = next((d for d in rendered if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "knit-agent"), None)
    if ds is not None:
        pod = ds["spec"]["template"]["spec"]
        if not pod.get("hostNetwork"):
            errors.append("knit-agent must run on the host network: it installs the pod network")
        tolerates_all = any(t.get("operator") == "Exists" and "key" not in t for t in pod.get("tolerations", []))
        if not tolerates_all and not any(t.get("key") == "node.kubernetes.io/not-ready" for t in pod.get("tolerations", [])):
            errors.append("knit-agent must tolerate node.kubernetes.io/not-ready: a node without a CNI is not ready")
    if not errors:
        for line in table:
            print(f"config/default bootstrap: {line}")
    return errors


def check_config_reload(rendered):
    """The operator's config reaches it without a restart: its ConfigMaps
    are mounted as directories (a subPath mount is never updated by the
    kubelet, and an env var is read once at start)."""
    errors = []
    dep = next((d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "knit-operator"), None)
    if dep is None:
        return ["config/default: no knit-operator Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "operator")
    volumes = {v["name"]: v.get("configMap", {}).get("name") for v in pod.get("volumes", [])}
    mounts = {volumes.get(m["name"]): m for m in c.get("volumeMounts", [])}
    for cm in ("knit-operator-config", "knit-images"):
        m = mounts.get(cm)
        if m is None:
            errors.append(f"knit-operator does not mount ConfigMap {cm}: its changes would need a restart")
        elif "subPath" in m:
            errors.append(f"knit-operator mounts ConfigMap {cm} with subPath, which the kubelet never updates")
    if mounts.get("knit-images") and f"--images-dir={mounts['knit-images']['mountPath']}" not in c.get("args", []):
        errors.append("knit-operator's --images-dir is not where ConfigMap knit-images is mounted")
    for e in c.get("env", []):
        if "configMapKeyRef" in e.get("valueFrom", {}):
            errors.append(f"knit-operator env {e['name']} comes from a ConfigMap: read once at start, never updated")
    if not errors:
        print("config/default: knit-operator reads knit-operator-config and knit-images from updatable mounts")
    return errors
