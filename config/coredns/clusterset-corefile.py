#!/usr/bin/env python3
"""Enables clusterset.local in a stock CoreDNS Corefile (stdin -> stdout).

CoreDNS >= 1.12.2 answers the Multi-Cluster Services names from
ServiceImports with the `multicluster` option of its `kubernetes` plugin:
the option goes inside the `kubernetes` block, and that block's zones must
include `clusterset.local`. (A top-level `multicluster` line is the external
plugin of the same name, which stock CoreDNS images do not have: CoreDNS
refuses the Corefile and stops serving at its next restart.)

    kubectl -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' \\
      | config/coredns/clusterset-corefile.py > Corefile
    kubectl -n kube-system create configmap coredns --from-file=Corefile \\
      --dry-run=client -o yaml | kubectl apply -f -

Running it again changes nothing. Exits 1, naming the problem, when the
Corefile has no `kubernetes ... {` block.
"""
import re
import sys

ZONE = "clusterset.local"


def enable(corefile):
    lines = corefile.splitlines()
    out = []
    found = False
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)kubernetes((?:\s+\S+)*?)\s*\{\s*$", line)
        if m and not found:
            found = True
            indent, zones = m.group(1), m.group(2).split()
            if ZONE not in zones:
                # After the cluster domain, before the reverse zones.
                at = next((k + 1 for k, z in enumerate(zones) if not z.endswith(".arpa")), 0)
                zones.insert(at, ZONE)
            out.append(f"{indent}kubernetes {' '.join(zones)} {{")
            # The block's own indentation, from its first line.
            inner = indent + "   "
            if i + 1 < len(lines) and lines[i + 1].strip():
                inner = re.match(r"^(\s*)", lines[i + 1]).group(1)
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "}":
                body.append(lines[i])
                i += 1
            if not any(b.split()[:2] == ["multicluster", ZONE] for b in body if b.strip()):
                body.insert(0, f"{inner}multicluster {ZONE}")
            out.extend(body)
            if i < len(lines):
                out.append(lines[i])
            i += 1
            continue
        out.append(line)
        i += 1
    if not found:
        raise SystemExit("no `kubernetes <zones> {` block in the Corefile: add `multicluster clusterset.local` "
                         "inside the kubernetes plugin's block and clusterset.local to its zones by hand")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(enable(sys.stdin.read()))
