"""The CoreDNS configuration Knit ships (config/coredns): the snippet and
what `clusterset-corefile.py` makes of stock Corefiles are what CoreDNS
>= 1.12.2 accepts for clusterset.local: `multicluster` only as an option
inside the `kubernetes` block, whose zones include clusterset.local."""
import glob
import os
import subprocess


def blocks(text):
    """(directive words, depth, enclosing directive words) per line."""
    out, stack = [], []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line == "}":
            stack.pop()
            continue
        words = line.rstrip("{").split()
        out.append((words, len(stack), stack[-1] if stack else None))
        if line.endswith("{"):
            stack.append(words)
    return out


def corefile_errors(text, where):
    errors = []
    kube = [(w, d, parent) for w, d, parent in blocks(text) if w and w[0] == "kubernetes"]
    for words, depth, parent in blocks(text):
        if words[0] == "multicluster" and (parent is None or parent[0] != "kubernetes"):
            errors.append(f"{where}: `multicluster` outside the kubernetes block (stock CoreDNS refuses it)")
    if not kube:
        errors.append(f"{where}: no kubernetes block")
    for words, _, _ in kube:
        if "clusterset.local" not in words[1:]:
            errors.append(f"{where}: the kubernetes block's zones {words[1:]} lack clusterset.local")
    inside = [w for w, _, parent in blocks(text) if parent and parent[0] == "kubernetes" and w[0] == "multicluster"]
    if inside != [["multicluster", "clusterset.local"]]:
        errors.append(f"{where}: the kubernetes block needs exactly one `multicluster clusterset.local`, has {inside}")
    return errors


def check_coredns(root):
    errors = corefile_errors(open(os.path.join(root, "config", "coredns", "Corefile.snippet")).read(),
                             "config/coredns/Corefile.snippet")
    old_snippet = ".:53 {\n    kubernetes cluster.local {\n    }\n    multicluster clusterset.local\n}\n"
    if not corefile_errors(old_snippet, "old"):
        errors.append("the Corefile check accepts the top-level `multicluster` line")
    script = os.path.join(root, "config", "coredns", "clusterset-corefile.py")
    for path in sorted(glob.glob(os.path.join(root, "tests", "manifests", "corefiles", "*.Corefile"))):
        name = os.path.relpath(path, root)
        stock = open(path).read()
        if not corefile_errors(stock, name):
            errors.append(f"{name}: the stock Corefile already passes; it is not a stock one")
        once = subprocess.run([script], input=stock, capture_output=True, text=True, check=True).stdout
        twice = subprocess.run([script], input=once, capture_output=True, text=True, check=True).stdout
        errors += corefile_errors(once, f"clusterset-corefile.py < {name}")
        if once != twice:
            errors.append(f"clusterset-corefile.py is not idempotent on {name}")
        kept = [w for w, _, _ in blocks(stock)]
        if [w for w, _, _ in blocks(once) if w[0] != "multicluster" and w[0] != "kubernetes"] != \
                [w for w in kept if w[0] != "kubernetes"]:
            errors.append(f"clusterset-corefile.py changed more than the kubernetes block of {name}")
        if not errors:
            print(f"config/coredns: {name} gets clusterset.local inside its kubernetes block")
    bad = subprocess.run([script], input=".:53 {\n    forward . /etc/resolv.conf\n}\n", capture_output=True, text=True)
    if bad.returncode == 0 or "kubernetes" not in bad.stderr:
        errors.append("clusterset-corefile.py must refuse a Corefile without a kubernetes block")
    return errors
