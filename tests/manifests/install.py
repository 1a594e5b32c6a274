"""Smaller install checks of `config/` (issue: a real `kubectl apply -k`)."""
import glob
import os
import subprocess

import yaml


def kustomize(path):
    out = subprocess.run(["kubectl", "kustomize", path], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def check_sample_ports(root):
    """The samples' peer endpoints name the peer front's port, never etcd's
    (which peers cannot reach)."""
    config = yaml.safe_load(open(os.path.join(root, "config", "operator", "config.yaml")))
    peer_port, etcd_port = config["apiserver"]["peerPort"], config["apiserver"]["port"]
    errors = []
    for path in sorted(glob.glob(os.path.join(root, "config", "samples", "*", "clustermeshpeer-*.yaml"))):
        doc = yaml.safe_load(open(path))
        for url in doc["spec"]["endpoints"]:
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            if port != peer_port:
                errors.append(f"{os.path.relpath(path, root)}: endpoint {url} is not on the peer port {peer_port}"
                              + (" (that is etcd's port, closed to peers)" if port == etcd_port else ""))
    if not errors:
        print(f"config/samples: every peer endpoint is on the peer front's port {peer_port}")
    return errors


def check_service_writes(root, rendered):
    """config/default grants the operator no write on Services outside its
    namespace; config/mcs adds exactly that (derived Services), and renders
    the MCS CRDs as generated."""
    errors = []
    for d in rendered:
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "knit-operator":
            for rule in d["rules"]:
                if "services" in rule.get("resources", []) and set(rule["verbs"]) & {"create", "patch", "update", "delete"}:
                    errors.append(f"config/default: ClusterRole knit-operator may {rule['verbs']} Services in every namespace")
    mcs = kustomize(os.path.join(root, "config", "mcs"))
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in mcs)
    want = ["ClusterRole/knit-operator-mcs", "ClusterRoleBinding/knit-operator-mcs",
            "CustomResourceDefinition/serviceexports.multicluster.x-k8s.io",
            "CustomResourceDefinition/serviceimports.multicluster.x-k8s.io"]
    if kinds != want:
        errors.append(f"config/mcs renders {kinds}, expected {want}")
    for d in mcs:
        if d["kind"] == "CustomResourceDefinition":
            plural = d["metadata"]["name"].split(".")[0]
            generated = yaml.safe_load(open(os.path.join(root, "crds", f"{plural}.yaml")))
            if generated != d:
                errors.append(f"config/mcs: {d['metadata']['name']} differs from crds/ (run `make crds`)")
    if any(d["kind"] == "CustomResourceDefinition" and "multicluster" in d["metadata"]["name"] for d in rendered):
        errors.append("config/default installs the MCS CRDs: they belong in config/mcs")
    if not errors:
        print("config/mcs: the MCS CRDs and the operator's Service writes come only with config/mcs")
    return errors


def check_release_images(root):
    """config/default runs the images the release workflow pushes: each
    Knit image at ghcr.io/knit-dev/<image>:v<workspace version>, and the
    workflow builds exactly those with scripts/build-images.py."""
    import tomllib
    version = "v" + tomllib.load(open(os.path.join(root, "Cargo.toml"), "rb"))["workspace"]["package"]["version"]
    errors = []
    kust = yaml.safe_load(open(os.path.join(root, "config", "default", "kustomization.yaml")))
    for image in kust["images"]:
        if image["name"].startswith("knit-"):
            want = (f"ghcr.io/knit-dev/{image['name']}", version)
            if (image.get("newName"), image.get("newTag")) != want:
                errors.append(f"config/default: {image['name']} is {image.get('newName')}:{image.get('newTag')}, "
                              f"the release pushes {want[0]}:{want[1]}")
    workflow = open(os.path.join(root, ".github", "workflows", "release.yml")).read()
    if "scripts/build-images.py" not in workflow or "ghcr.io/knit-dev/$c" not in workflow:
        errors.append(".github/workflows/release.yml does not build and push the images with scripts/build-images.py")
    if "scripts/check-release.py" not in workflow:
        errors.append(".github/workflows/release.yml does not check the tag against the version and CHANGELOG.md")
    check = subprocess.run([os.path.join(root, "scripts", "check-release.py"), version],
                           capture_output=True, text=True)
    if check.returncode != 0:
        errors.append(f"scripts/check-release.py {version}: {check.stdout}{check.stderr}".strip())
    if not errors:
        print(f"config/default: runs the release images ghcr.io/knit-dev/*:{version}")
    return errors


def check_secret_modes(rendered):
    """Every Secret volume of config/default is mounted 0400: keys are
    readable by the container's user only."""
    errors = []
    for d in rendered:
        if d["kind"] in ("Deployment", "DaemonSet"):
            for v in d["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in v and v["secret"].get("defaultMode") != 0o400:
                    errors.append(f"{d['kind']}/{d['metadata']['name']}: Secret volume {v['name']} is not defaultMode 0400")
    if not errors:
        print("config/default: Secret volumes are mounted 0400")
    return errors


def check_linux_only(rendered):
    """Every workload runs on Linux nodes only: a Windows node never gets
    the agent (eBPF, netlink) or the operator."""
    errors = []
    for d in rendered:
        if d["kind"] in ("Deployment", "DaemonSet"):
            selector = d["spec"]["template"]["spec"].get("nodeSelector", {})
            if selector.get("kubernetes.io/os") != "linux":
                errors.append(f"{d['kind']}/{d['metadata']['name']} lacks nodeSelector kubernetes.io/os: linux")
    if not errors:
        print("config/default: every workload selects kubernetes.io/os: linux")
    return errors


def check_other_namespace(root):
    """config/other-namespace installs Knit in namespace `mesh`: everything
    moves there, the bindings name that namespace, and the operator learns
    it from its pod (POD_NAMESPACE) rather than config.yaml."""
    errors = []
    docs = kustomize(os.path.join(root, "config", "other-namespace"))
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] == "Namespace":
            if d["metadata"]["name"] != "mesh":
                errors.append(f"namespace overlay: Namespace {d['metadata']['name']}")
        elif ns not in (None, "mesh"):
            errors.append(f"namespace overlay: {d['kind']}/{d['metadata']['name']} stays in {ns}")
        for s in d.get("subjects", []):
            if s.get("kind") == "ServiceAccount" and s.get("namespace") != "mesh":
                errors.append(f"namespace overlay: {d['kind']}/{d['metadata']['name']} binds {s}")
    op = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "knit-operator")
    env = {e["name"]: e for e in op["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    if env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
        errors.append("knit-operator does not learn its namespace from its pod (env POD_NAMESPACE from metadata.namespace)")
    # The agent exempts its own namespace's pods (the mesh apiserver) from
    # the wait for an identity: it must be the namespace Knit runs in.
    agent = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "knit-agent")
    container = next(c for c in agent["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
    env = {e["name"]: e for e in container.get("env", [])}
    if env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
        errors.append("knit-agent does not learn its namespace from its pod (env POD_NAMESPACE from metadata.namespace)")
    if not errors:
        print("config/other-namespace: every object and binding moves to namespace mesh")
    return errors
