#!/usr/bin/env python3
"""Checks every relative link of the repository's Markdown files: the file
(or directory) it names exists, and an anchor (`page.md#section`, `#section`)
names a heading of that page (GitHub's slugs). Prints each broken link and
exits 1 if there is one. External links (http, https, mailto) are not
fetched."""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", "target", "node_modules", ".run", "dist", "data"}
LINK = re.compile(r"(?<!\\)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def markdown_files():
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv")]
        for name in files:
            if name.endswith(".md"):
                yield os.path.join(top, name)


def prose_lines(path):
    """The lines outside fenced code blocks, with their numbers."""
    inside = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if FENCE.match(line):
                inside = not inside
                continue
            if not inside:
                yield number, line


def slug(heading):
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        found, seen = set(), {}
        for _, line in prose_lines(path):
            m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        cache[path] = found
    return cache[path]


def main():
    broken = []
    checked = 0
    for page in sorted(markdown_files()):
        for number, line in prose_lines(page):
            # Inline code is not a link.
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue
                checked += 1
                path, _, anchor = target.partition("#")
                where = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
                shown = f"{os.path.relpath(page, ROOT)}:{number}: {target}"
                if not os.path.exists(where):
                    broken.append(f"{shown} (no such file)")
                elif anchor and where.endswith(".md") and anchor not in anchors(where):
                    broken.append(f"{shown} (no heading #{anchor})")
    for b in broken:
        print(f"broken link: {b}")
    print(f"checked {checked} relative links in Markdown files: {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
