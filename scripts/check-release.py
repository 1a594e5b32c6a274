#!/usr/bin/env python3
"""Checks that a release tag names this checkout's version: the tag is
v<workspace version> (Cargo.toml, which every binary reports with
--version), and CHANGELOG.md has a section `## [<version>]` with at least
one entry. The release workflow runs it first; tests/manifests runs it with
the current version, so CHANGELOG.md cannot fall behind a version bump.

Usage: scripts/check-release.py TAG
"""
import os
import re
import sys
import tomllib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1])
        return 2
    tag = sys.argv[1]
    version = tomllib.load(open(os.path.join(ROOT, "Cargo.toml"), "rb"))["workspace"]["package"]["version"]
    if tag != f"v{version}":
        print(f"tag {tag} is not v{version}, the version in Cargo.toml: bump [workspace.package] version first")
        return 1
    changelog = open(os.path.join(ROOT, "CHANGELOG.md")).read()
    section = re.search(rf"^## \[{re.escape(version)}\][^\n]*\n(.*?)(?=^## \[|\Z)", changelog, re.M | re.S)
    if section is None:
        print(f"CHANGELOG.md has no section '## [{version}]': describe the release there")
        return 1
    if not re.search(r"^- ", section.group(1), re.M):
        print(f"CHANGELOG.md's section for {version} lists nothing")
        return 1
    print(f"release {tag}: version and CHANGELOG.md agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
