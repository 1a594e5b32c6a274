#!/usr/bin/env python3
"""Keeps the code readable in one sitting: fails when a production function
is over 120 lines or a production file over 700, except for the entries of
scripts/size-exceptions.txt (each with its reason, and its current size as
a ceiling: an exception may shrink, never grow).

Production code is every crate's src/ except the test harnesses (e2e,
testkit), up to the file's `#[cfg(test)]` module. Function bodies are
measured from the line of `fn` to the line of the closing brace, with
strings, characters and comments skipped when matching braces.

Usage: scripts/check-sizes.py [--list]   (--list prints every measure)
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_FN = 120
MAX_FILE = 700
HARNESSES = {"e2e", "testkit"}
EXCEPTIONS = ROOT / "scripts" / "size-exceptions.txt"

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)")


def production_files():
    for cargo in sorted(ROOT.glob("*/Cargo.toml")):
        crate = cargo.parent
        if crate.name in HARNESSES:
            continue
        yield from sorted((crate / "src").rglob("*.rs"))


def production_lines(path):
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]":
            return lines[:i]
    return lines


def code_only(text):
    """`text` with strings, chars and comments blanked (lengths kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(lines):
    """(name, first line, length) of every fn with a body."""
    code = code_only("\n".join(lines)).split("\n")
    found = []
    for start, line in enumerate(code):
        m = FN.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for k in range(start, len(code)):
            for ch in code[k]:
                if ch == "{":
                    depth += 1
                    opened = True
                elif ch == "}":
                    depth -= 1
                elif ch == ";" and not opened and depth == 0:
                    break  # a declaration without a body
            else:
                if opened and depth == 0:
                    found.append((m.group(6), start + 1, k - start + 1))
                    break
                continue
            break
    return found


def load_exceptions():
    out = {}
    for raw in EXCEPTIONS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        target, ceiling, *_ = line.split()
        reason = raw.split("#", 1)[1].strip() if "#" in raw else ""
        if not reason:
            sys.exit(f"check-sizes: {target} in {EXCEPTIONS.name} needs a reason after '#'")
        out[target] = int(ceiling)
    return out


def main():
    listing = "--list" in sys.argv
    exceptions = load_exceptions()
    seen = set()
    problems = []
    for path in production_files():
        rel = path.relative_to(ROOT).as_posix()
        lines = production_lines(path)
        measures = [(rel, len(lines), MAX_FILE)]
        measures += [(f"{rel}::{name}", length, MAX_FN) for name, _, length in functions(lines)]
        for target, size, limit in measures:
            if listing:
                print(f"{size:5} {target}")
            if size <= limit:
                continue
            ceiling = exceptions.get(target)
            seen.add(target)
            if ceiling is None:
                problems.append(f"{target}: {size} lines, over {limit}; split it by responsibility (or, if it must stay, list it in {EXCEPTIONS.name} with why)")
            elif size > ceiling:
                problems.append(f"{target}: {size} lines, over its listed ceiling of {ceiling}; it may shrink, never grow")
    for target in sorted(set(exceptions) - seen):
        problems.append(f"{target}: listed in {EXCEPTIONS.name} but within its limit now (or gone); remove the entry")
    if problems:
        print("check-sizes: " + "\n  ".join(["production code over its size limits:"] + problems))
        sys.exit(1)
    print(f"check-sizes: every production function within {MAX_FN} lines and file within {MAX_FILE}, {len(exceptions)} listed exception(s)")


if __name__ == "__main__":
    main()
