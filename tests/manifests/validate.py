#!/usr/bin/env python3
"""Offline validation of everything under config/ and of the CRD schemas.

1. `kubectl kustomize config/default` renders; built-in kinds pass
   kubernetes-validate (strict); the CRDs in it are the generated ones.
2. The samples (config/samples/*) pass the generated CRD schemas, CEL rules
   included (evaluated with cel-python, as the API server would).
3. Every manifest in tests/manifests/invalid/ is rejected, and each of its
   `# expect: ...` lines appears in an error message: the message names the
   field, as the API server's would.

The schema check follows the API server: defaults are applied first, unknown
fields are errors (kubectl's default --validate=strict), then OpenAPI
constraints, then x-kubernetes-validations at each node.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import celpy
import kubernetes_validate
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bootstrap import check_bootstrap, check_config_reload  # noqa: E402
from argocd import check_argocd  # noqa: E402
from coredns import check_coredns  # noqa: E402
from install import (  # noqa: E402
    check_linux_only, check_other_namespace, check_release_images, check_sample_ports, check_secret_modes,
    check_service_writes)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S_VERSION = "1.33.0"
CEL = celpy.Environment()


def kustomize(path):
    out = subprocess.run(["kubectl", "kustomize", path], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def load_crds():
    crds = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "crds", "*.yaml"))):
        with open(path) as f:
            crd = yaml.safe_load(f)
        for version in crd["spec"]["versions"]:
            key = (crd["spec"]["group"] + "/" + version["name"], crd["spec"]["names"]["kind"])
            crds[key] = (crd, version["schema"]["openAPIV3Schema"])
    return crds


def fmt(value):
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def apply_defaults(schema, value):
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = sub["default"]
            if name in value:
                apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for v in value.values():
                apply_defaults(extra, v)
    elif isinstance(value, list) and "items" in schema:
        for v in value:
            apply_defaults(schema["items"], v)


def join(path, key):
    return f"{path}.{key}" if path else key


def check(schema, value, path, errors):
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{path}: Invalid value: null: {path} in body must not be null")
        return
    typ = schema.get("type")
    ok = {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        None: True,
    }[typ]
    if not ok:
        errors.append(f"{path}: Invalid value: {fmt(value)}: {path} in body must be of type {typ}")
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(f'"{e}"' for e in schema["enum"])
        errors.append(f"{path}: Unsupported value: {fmt(value)}: supported values: {supported}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: Invalid value: \"{value}\": {path} in body should match '{schema['pattern']}'")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: Invalid value: \"{value}\": {path} in body should be at least {schema['minLength']} chars long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: Too long: may not be more than {schema['maxLength']} bytes")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: Invalid value: {value}: {path} in body should be greater than or equal to {int(schema['minimum'])}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: Invalid value: {value}: {path} in body should be less than or equal to {int(schema['maximum'])}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: Invalid value: {len(value)}: {path} in body should have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        if schema.get("x-kubernetes-list-type") == "set":
            for i, item in enumerate(value):
                if item in value[:i]:
                    errors.append(f"{path}[{i}]: Duplicate value: {json.dumps(item)}")
        for i, item in enumerate(value):
            check(schema.get("items", {}), item, f"{path}[{i}]", errors)
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{join(path, req)}: Required value")
        for k, v in value.items():
            if props is not None and k in props:
                check(props[k], v, join(path, k), errors)
            elif isinstance(extra, dict):
                check(extra, v, f"{path}[{k}]", errors)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f'unknown field "{join(path, k)}"')
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = CEL.program(CEL.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # a rule that cannot run is a failed rule, as in the API server
            ok = False
            rule = dict(rule, message=f"{rule.get('message', rule['rule'])} (evaluation error: {e})")
        if not bool(ok):
            field = (path or "<root>") + rule.get("fieldPath", "")
            errors.append(f"{field}: Invalid value: \"object\": {rule.get('message') or 'failed rule: ' + rule['rule']}")


def validate_cr(doc, crds):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in crds:
        return [f"no CRD for {key}"]
    crd, schema = crds[key]
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    errors = []
    scope_ns = crd["spec"]["scope"] == "Namespaced"
    if scope_ns != ("namespace" in (doc.get("metadata") or {})):
        errors.append(f"metadata.namespace: {'Required' if scope_ns else 'Forbidden'} for a {crd['spec']['scope']}-scoped resource")
    sub = dict(schema)
    sub["properties"] = {k: v for k, v in schema["properties"].items() if k not in ("apiVersion", "kind", "metadata")}
    apply_defaults(sub, body)
    check(sub, body, "", errors)
    return errors


def check_agent_install(rendered):
    """What a real node needs from the agent DaemonSet (issue: Knit on a real node)."""
    errors = []
    ds = next((d for d in rendered if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "knit-agent"), None)
    if ds is None:
        return ["config/default: no knit-agent DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    if pod.get("hostNetwork") and pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
        errors.append("knit-agent is hostNetwork without dnsPolicy ClusterFirstWithHostNet: knit-apiserver.knit-system.svc would not resolve")
    init = {c["name"]: c for c in pod.get("initContainers", [])}
    install = init.get("install-cni")
    if install is None or install.get("args", [None])[0] != "install-cni":
        errors.append("knit-agent has no install-cni init container")
    else:
        mounts = {m["mountPath"] for m in install.get("volumeMounts", [])}
        for want in ("/host/etc/cni/net.d", "/host/opt/cni/bin"):
            if want not in mounts:
                errors.append(f"install-cni does not mount the node's {want[5:]}")
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    state = next((a.split("=", 1)[1] for a in agent["args"] if a.startswith("--cni-state-dir=")), None)
    if state != "/run/knit/cni" or "/run/knit/cni" not in {m["mountPath"] for m in agent["volumeMounts"]}:
        errors.append("the agent does not mount knit-cni's state directory /run/knit/cni")
    if install and "--state-dir=/run/knit/cni" not in install.get("args", []):
        errors.append("install-cni and the agent disagree on the CNI state directory")
    namespace = ds["metadata"].get("namespace")
    if pod.get("priorityClassName") == "system-node-critical" and namespace != "kube-system":
        quota = [d for d in rendered if d["kind"] == "ResourceQuota" and d["metadata"].get("namespace") == namespace]
        scoped = any(
            "system-node-critical" in e.get("values", [])
            for q in quota
            for e in q["spec"].get("scopeSelector", {}).get("matchExpressions", [])
        )
        if not scoped:
            errors.append(f"system-node-critical in {namespace} needs a ResourceQuota scoped to that PriorityClass")
    if not errors:
        print("config/default: knit-agent installs the CNI, resolves cluster DNS, may use system-node-critical")
    return errors


def check_images_in_one_place():
    """Every image Knit runs, the ones the operator deploys included, follows
    config/default's `images:` list: an overlay that renames each listed image
    must leave no image behind."""
    import tempfile
    listed = yaml.safe_load(open(os.path.join(ROOT, "config", "default", "kustomization.yaml")))["images"]
    with tempfile.TemporaryDirectory() as overlay:
        base = os.path.relpath(os.path.join(ROOT, "config", "default"), overlay)
        # An overlay sees the names config/default already rewrote.
        names = [i.get("newName", i["name"]) for i in listed]
        images = [{"name": n, "newName": "override.example/" + n.split("/")[-1], "newTag": "test"} for n in names]
        with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
            yaml.safe_dump({"resources": [base], "images": images}, f)
        rendered = kustomize(overlay)
    found = []
    for doc in rendered:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "knit-images":
            found += [(f"ConfigMap/knit-images {k}", v) for k, v in doc["data"].items()]
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            found.append((f"{doc['kind']}/{doc['metadata']['name']} {c['name']}", c["image"]))
    errors = [f"config/default: {where} uses {image!r}, which the images list does not override"
              for where, image in found if not image.startswith("override.example/")]
    if len(found) < 5:
        errors.append(f"config/default: expected the operator, agent, init, apiserver and etcd images, found {found}")
    if not errors:
        print(f"config/default: all {len(found)} images follow the one images list")
    return errors


METRIC_CRATES = {"knit_agent_": "agent", "knit_apiserver_": "apiserver", "knit_operator_": "operator"}


def metric_is_registered(metric):
    """Whether `metric` (as Prometheus scrapes it) is registered in the Rust
    code of its component: the name after the prefix, without `_total`, must
    be a string literal there."""
    for prefix, crate in METRIC_CRATES.items():
        if metric.startswith(prefix):
            bare = metric[len(prefix):]
            bare = bare[: -len("_total")] if bare.endswith("_total") else bare
            sources = glob.glob(os.path.join(ROOT, crate, "src", "**", "*.rs"), recursive=True)
            return any(f'"{bare}"' in open(f).read() for f in sources)
    return False


def check_monitoring():
    """config/monitoring: the alerts pass `promtool check rules` and their
    unit tests (`promtool test rules`), and every metric the alerts and the
    dashboard query is one Knit exports."""
    failures = []
    docs = kustomize(os.path.join(ROOT, "config", "monitoring"))
    rule = next((d for d in docs if d["kind"] == "PrometheusRule"), None)
    dashboard_cm = next((d for d in docs if d["kind"] == "ConfigMap"), None)
    if rule is None or dashboard_cm is None:
        return ["config/monitoring: needs a PrometheusRule and the dashboard ConfigMap"]
    if dashboard_cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        failures.append("config/monitoring: the dashboard ConfigMap lacks label grafana_dashboard=1")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    dashboard = json.loads(next(iter(dashboard_cm["data"].values())))
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for metric in sorted({m for e in exprs for m in re.findall(r"knit_[a-z0-9_]+", e)}):
        if not metric_is_registered(metric):
            failures.append(f"config/monitoring: {metric} is queried but no component exports it")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "rules.yaml"), "w") as f:
            yaml.safe_dump(rule["spec"], f)
        shutil.copy(os.path.join(ROOT, "config", "monitoring", "tests", "rules_test.yaml"), tmp)
        for args in (["check", "rules", "rules.yaml"], ["test", "rules", "rules_test.yaml"]):
            run = subprocess.run(["promtool", *args], cwd=tmp, capture_output=True, text=True)
            if run.returncode != 0:
                failures.append(f"config/monitoring: promtool {' '.join(args)} failed:\n{run.stdout}{run.stderr}")
            else:
                print(f"config/monitoring: promtool {' '.join(args[:2])}: ok")
    print(f"config/monitoring: {len(exprs)} queries use only exported metrics" if not failures else "")
    failures += check_scraped(docs)
    return failures


def check_scraped(monitoring):
    """Every Knit pod's metrics port is scraped: a PodMonitor selects the
    operator's and the agents' pods (config/default) and the mesh
    apiserver's (rendered by the operator, see operator/tests/render.rs),
    on a container port named as the PodMonitor says."""
    failures = []
    monitors = {d["metadata"]["name"]: d for d in monitoring if d["kind"] == "PodMonitor"}
    pods = {}
    for d in kustomize(os.path.join(ROOT, "config", "default")):
        if d["kind"] in ("Deployment", "DaemonSet"):
            pods[d["metadata"]["name"]] = d["spec"]["template"]
    for name in ("knit-operator", "knit-agent", "knit-apiserver"):
        m = monitors.get(name)
        if m is None:
            failures.append(f"config/monitoring: no PodMonitor scrapes {name}")
            continue
        if name not in pods:
            continue
        labels = pods[name]["metadata"].get("labels", {})
        want = m["spec"]["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in want.items()):
            failures.append(f"config/monitoring: PodMonitor {name} selects {want}, the pods have {labels}")
        ports = {p.get("name") for c in pods[name]["spec"]["containers"] for p in c.get("ports", [])}
        for ep in m["spec"]["podMetricsEndpoints"]:
            if ep["port"] not in ports:
                failures.append(f"config/monitoring: PodMonitor {name} scrapes port {ep['port']}, not one of {ports}")
    if not failures:
        print(f"config/monitoring: PodMonitors scrape {sorted(monitors)}")
    return failures


# Each distribution's CNI config and plugin directories (docs/cni.md).
DISTRO_CNI_DIRS = {
    "eks": ("/etc/cni/net.d", "/opt/cni/bin"),
    "gke": ("/etc/cni/net.d", "/home/kubernetes/bin"),
    "k3s": ("/var/lib/rancher/k3s/agent/etc/cni/net.d", "/var/lib/rancher/k3s/data/current/bin"),
    "openshift": ("/etc/kubernetes/cni/net.d", "/var/lib/cni/bin"),
    "rke2": ("/etc/cni/net.d", "/opt/cni/bin"),
}


def check_distros():
    """config/distros/*: every overlay renders valid objects, and mounts its
    distribution's CNI directories where the agent and install-cni expect
    the node's config and plugin directories."""
    failures = []
    found = sorted(os.path.basename(os.path.dirname(p))
                   for p in glob.glob(os.path.join(ROOT, "config", "distros", "*", "kustomization.yaml")))
    if found != sorted(DISTRO_CNI_DIRS):
        failures.append(f"config/distros: expected {sorted(DISTRO_CNI_DIRS)}, found {found}")
    for distro in found:
        docs = kustomize(os.path.join(ROOT, "config", "distros", distro))
        for doc in docs:
            if doc["kind"] == "CustomResourceDefinition":
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                failures.append(f"config/distros/{distro}: {doc['kind']}/{doc['metadata']['name']}: {e.message}")
        ds = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "knit-agent")
        volumes = {v["name"]: v.get("hostPath", {}).get("path") for v in ds["spec"]["template"]["spec"]["volumes"]}
        got = (volumes.get("cni-conf"), volumes.get("cni-bin"))
        if got != DISTRO_CNI_DIRS.get(distro):
            failures.append(f"config/distros/{distro}: CNI directories {got}, expected {DISTRO_CNI_DIRS.get(distro)}")
        else:
            print(f"config/distros/{distro}: CNI config {got[0]}, plugins {got[1]}")
    return failures


def main():
    crds = load_crds()
    failures = []

    rendered = kustomize(os.path.join(ROOT, "config", "default"))
    builtin = 0
    for doc in rendered:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "CustomResourceDefinition":
            generated = next((c for c, _ in crds.values() if c["metadata"]["name"] == doc["metadata"]["name"]), None)
            if generated != doc:
                failures.append(f"config/default: {name} differs from crds/ (run `make crds`)")
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            builtin += 1
        except kubernetes_validate.ValidationError as e:
            failures.append(f"config/default: {name}: {e.message} at {'.'.join(map(str, e.path))}")
    print(f"config/default: {len(rendered)} objects rendered, {builtin} built-in objects valid for Kubernetes {K8S_VERSION}")
    failures += check_agent_install(rendered)
    failures += check_bootstrap(rendered)
    failures += check_config_reload(rendered)
    failures += check_sample_ports(ROOT)
    failures += check_linux_only(rendered)
    failures += check_service_writes(ROOT, rendered)
    failures += check_release_images(ROOT)
    failures += check_secret_modes(rendered)
    failures += check_argocd(ROOT)
    failures += check_other_namespace(ROOT)
    failures += check_images_in_one_place()
    failures += check_monitoring()
    for doc in kustomize(os.path.join(ROOT, "config", "coredns")):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"config/coredns: {doc['kind']}/{doc['metadata']['name']}: {e.message}")
    failures += check_coredns(ROOT)

    failures += check_distros()

    for sample in sorted(glob.glob(os.path.join(ROOT, "config", "samples", "*", "kustomization.yaml"))):
        d = os.path.dirname(sample)
        for doc in kustomize(d):
            errors = validate_cr(doc, crds)
            label = f"{os.path.relpath(d, ROOT)}: {doc['kind']}/{doc['metadata']['name']}"
            if errors:
                failures.append(f"{label} is invalid: {errors}")
            else:
                print(f"{label}: valid")

    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "manifests", "invalid", "*.yaml"))):
        text = open(path).read()
        expects = re.findall(r"^# expect: (.+)$", text, re.M)
        doc = yaml.safe_load(text)
        errors = validate_cr(doc, crds)
        rel = os.path.relpath(path, ROOT)
        if not errors:
            failures.append(f"{rel}: accepted, but must be rejected")
            continue
        for want in expects:
            if not any(want in e for e in errors):
                failures.append(f"{rel}: no error mentions {want!r}; got {errors}")
        print(f"{rel}: rejected:")
        for e in errors:
            print(f"    {doc['kind']}.knit.dev \"{doc['metadata']['name']}\" is invalid: {e}")

    if failures:
        print("\nFAILED:", *failures, sep="\n  ")
        sys.exit(1)
    print("manifests: all checks passed")


if __name__ == "__main__":
    main()
