"""config/argocd's health checks, run by a real Lua 5.1 (the language
version Argo CD embeds, gopher-lua) against ClusterMeshPeers and
GlobalServicePolicies in each state the operator writes."""
import os
import subprocess

import yaml


def lua_value(v):
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "{" + ", ".join(lua_value(x) for x in v) + "}"
    return "{" + ", ".join(f"[{lua_value(k)}] = {lua_value(x)}" for k, x in v.items()) + "}"


def run(script, obj):
    program = f"obj = {lua_value(obj)}\nlocal function check()\n{script}\nend\nlocal hs = check()\nio.write(hs.status, '\\n', hs.message or '')\n"
    out = subprocess.run(["lua5.1", "-"], input=program, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    status, _, message = out.stdout.partition("\n")
    return status, message


def obj(generation, status):
    o = {"apiVersion": "knit.dev/v1alpha1", "metadata": {"name": "x", "generation": generation}}
    if status is not None:
        o["status"] = status
    return o


def ready(s, reason, message, observed=2):
    return {"observedGeneration": observed,
            "conditions": [{"type": "Synced", "status": "True", "reason": "Synced", "message": ""},
                           {"type": "Ready", "status": s, "reason": reason, "message": message}]}


CASES = [
    ("no status yet", obj(2, None), "Progressing", "Waiting for knit-operator"),
    ("an older generation observed", obj(3, ready("True", "Ready", "ok", observed=2)), "Progressing", "generation 3"),
    ("ready", obj(2, ready("True", "Ready", "connected and synced")), "Healthy", "connected and synced"),
    ("not ready", obj(2, ready("False", "CaInvalid", "spec.caBundle is not a PEM certificate")), "Degraded", "spec.caBundle"),
    ("waiting for the mesh apiserver", obj(2, ready("Unknown", "AwaitingMeshApiserver", "no report yet")), "Progressing", "AwaitingMeshApiserver"),
    ("status without conditions", obj(2, {"observedGeneration": 2}), "Progressing", "No Ready condition"),
]


def check_argocd(root):
    errors = []
    cm = yaml.safe_load(open(os.path.join(root, "config", "argocd", "argocd-cm-health.yaml")))
    for kind in ("ClusterMeshPeer", "GlobalServicePolicy"):
        script = cm["data"].get(f"resource.customizations.health.knit.dev_{kind}")
        if script is None:
            errors.append(f"config/argocd: no health check for {kind}")
            continue
        for name, o, want, words in CASES:
            o = dict(o, kind=kind)
            try:
                status, message = run(script, o)
            except RuntimeError as e:
                errors.append(f"config/argocd: {kind} health check fails on {name}: {e}")
                continue
            if status != want or words not in message:
                errors.append(f"config/argocd: {kind} {name}: {status} {message!r}, expected {want} mentioning {words!r}")
    if not errors:
        print(f"config/argocd: both health checks give the expected status in {len(CASES)} states (lua5.1)")
    return errors
