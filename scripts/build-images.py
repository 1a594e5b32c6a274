#!/usr/bin/env python3
"""Builds Knit's container images as OCI image archives, without a
container engine: `make images` (release binaries) or the image test (debug
binaries).

For each component it writes an OCI image layout directory
`<out>/<image>/` (`oci-layout`, `index.json`, `blobs/sha256/...`) and the
same as an archive `<out>/<image>.tar`, which `ctr images import`,
`docker load` and `skopeo copy oci-archive:` read. Each image is one layer:

- knit-operator: knit-operator and knitctl, user 65532 (nonroot);
- knit-apiserver: knit-apiserver, user 65532;
- knit-agent: knit-agent, knit-cni (static: it runs on the node), knitctl
  and the reference CNI plugins install-cni puts on nodes that lack them
  (ptp, host-local, portmap, loopback from Debian's
  containernetworking-plugins), user 0 (it loads eBPF programs).

Every dynamically linked binary brings the shared libraries `ldd` reports
(and the dynamic loader), so the images need no base image. Layers are
written reproducibly (sorted, owner 0, mtime 0): the same binaries give the
same digests. The index names the platform (linux/<arch>) and the config
carries the OCI labels (title, version, revision, source), user and
entrypoint, so a release can push per-architecture images under one index.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tomllib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SOURCE = "https://github.com/knit-dev/knit"
CNI_PLUGINS = ["ptp", "host-local", "portmap", "loopback"]


def components(bin_dir, cni_bin, plugin_dir):
    def b(name):
        return os.path.join(bin_dir, name)
    return {
        "knit-operator": {
            "files": {"/usr/local/bin/knit-operator": b("knit-operator"), "/usr/local/bin/knitctl": b("knitctl")},
            "entrypoint": ["/usr/local/bin/knit-operator"],
            "user": "65532:65532",
            "description": "Knit operator: certificates, mesh apiserver and peer configs from ClusterMeshPeers",
        },
        "knit-apiserver": {
            "files": {"/usr/local/bin/knit-apiserver": b("knit-apiserver")},
            "entrypoint": ["/usr/local/bin/knit-apiserver"],
            "user": "65532:65532",
            "description": "Knit mesh apiserver: exports this cluster to etcd and mirrors peers",
        },
        "knit-agent": {
            "files": {
                "/usr/local/bin/knit-agent": b("knit-agent"),
                "/usr/local/bin/knit-cni": cni_bin or b("knit-cni"),
                "/usr/local/bin/knitctl": b("knitctl"),
                **{f"/usr/lib/cni/{p}": os.path.join(plugin_dir, p) for p in CNI_PLUGINS},
            },
            "entrypoint": ["/usr/local/bin/knit-agent"],
            "user": "0:0",
            "description": "Knit node agent: programs the eBPF datapath; install-cni chains Knit into the node's CNI",
        },
        "knit-probe": {
            "files": {"/usr/local/bin/knit-probe": b("knit-probe")},
            "entrypoint": ["/usr/local/bin/knit-probe"],
            "user": "65532:65532",
            "description": "Knit test workload: echo server and prober of knitctl connectivity test",
        },
    }


def linked_libraries(path):
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    if out.returncode != 0:  # statically linked
        return []
    libs = []
    for line in out.stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                libs.append(word)
    return libs


def layer(files):
    """A reproducible tar of `files` (image path -> host path) and their
    libraries; returns its bytes."""
    entries = {}
    for dst, src in files.items():
        if not os.path.isfile(src):
            sys.exit(f"{src} missing (for {dst}): build the binaries first (make images does)")
        entries[dst.lstrip("/")] = src
        for lib in linked_libraries(src):
            entries.setdefault(lib.lstrip("/"), os.path.realpath(lib))
    dirs = {"tmp"}
    for path in entries:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, 0
            tar.addfile(info)
        for path in sorted(entries):
            src = entries[path]
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = os.path.getsize(src), 0o755, 0
            with open(src, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def blob(blobs, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build(name, spec, out, registry, version, revision, arch):
    layout = os.path.join(out, name)
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    raw = layer(spec["files"])
    compressed = gzip.compress(raw, compresslevel=6, mtime=0)
    layer_desc = blob(blobs, compressed)
    labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.description": spec["description"],
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": spec["user"],
            "Entrypoint": spec["entrypoint"],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    config_desc = blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
        "annotations": labels,
    }
    manifest_desc = blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    reference = f"{registry}/{name}:{version}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **manifest_desc,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": version},
        }],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    archive = os.path.join(out, f"{name}.tar")
    with tarfile.open(archive, "w") as tar:
        for base, _, files in sorted(os.walk(layout)):
            for fname in sorted(files):
                full = os.path.join(base, fname)
                info = tar.gettarinfo(full, os.path.relpath(full, layout))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(full, "rb") as f:
                    tar.addfile(info, f)
    return reference, archive, len(compressed)


def main():
    version = tomllib.load(open(os.path.join(ROOT, "Cargo.toml"), "rb"))["workspace"]["package"]["version"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    p.add_argument("--cni-bin", help="knit-cni (static); default <bin-dir>/knit-cni")
    p.add_argument("--cni-plugins", default="/usr/lib/cni")
    p.add_argument("--out", default=os.path.join(ROOT, "target", "images"))
    p.add_argument("--registry", default="ghcr.io/knit-dev")
    p.add_argument("--version", default=f"v{version}")
    p.add_argument("--revision", default=None)
    args = p.parse_args()
    revision = args.revision or subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    os.makedirs(args.out, exist_ok=True)
    for name, spec in components(args.bin_dir, args.cni_bin, args.cni_plugins).items():
        reference, archive, size = build(name, spec, args.out, args.registry, args.version, revision, arch)
        print(f"{reference}: {os.path.relpath(archive)} ({size / 1e6:.1f} MB compressed layer)")


if __name__ == "__main__":
    main()
