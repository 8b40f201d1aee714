#!/usr/bin/env python3
"""Import cycles between the modules of a Rust crate, from its `use` trees and inline
`crate::`/`super::` paths (text only, no compiler).

    tests/tools/import_cycles.py CRATE_SRC_DIR...     e.g. vmm/src provider/src

Each file is a module (`a/mod.rs` and `a.rs` are `a`). A path names the deepest module it
reaches; a module's use of its own ancestors (the items and re-exports of a parent `mod.rs`)
is structure, not a dependency, and is left out. Prints every cycle (a strongly connected set
of modules) twice: between the top-level modules, and between all modules. Exits 1 when there
is one."""

import pathlib
import re
import sys

USE = re.compile(r"\buse\s+([^;]*);", re.S)
INLINE = re.compile(r"\b((?:crate|super)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))+)")
COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def module_of(src, path):
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def expand(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    depth, top, start = 0, None, 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                top = i
            depth += 1
        elif ch == "}":
            depth -= 1
    if top is None:
        return [tree]
    prefix, inner = tree[:top], tree[top + 1:-1]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner + ","):
        if ch in "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            if inner[start:i]:
                items.append(inner[start:i])
            start = i + 1
    return [p for item in items for p in expand(prefix + item)]


def resolve(here, path, modules):
    """The deepest known module a `crate::`/`super::` path reaches, from module `here`."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] == "super":
        base = here
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    else:
        return None
    mod = base
    for s in segs:
        if s == "self" or mod + (s,) not in modules:
            break
        mod = mod + (s,)
    return mod


def graph(src):
    src = pathlib.Path(src)
    files = {module_of(src, p): p for p in sorted(src.rglob("*.rs"))}
    modules = set(files)
    edges = {m: set() for m in modules}
    for mod, path in files.items():
        # Paths in `super::` refer to the parent of the file's module, as rustc reads them.
        text = STRING.sub('""', COMMENT.sub("", path.read_text()))
        paths = [p for u in USE.findall(text) for p in expand(u)]
        paths += INLINE.findall(USE.sub("", text))
        for p in paths:
            target = resolve(mod, p, modules)
            if target is None or target == mod or mod[: len(target)] == target:
                continue  # not a crate path, or the module itself or one of its ancestors
            edges[mod].add(target)
    return edges


def cycles(edges):
    """Strongly connected sets of more than one node (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(dirs):
    found = False
    for src in dirs:
        edges = graph(src)
        top = {}
        for a, targets in edges.items():
            for b in targets:
                if a and b and a[0] != b[0]:
                    top.setdefault(a[0], set()).add(b[0])
        name = lambda m: "::".join(m) or "crate"
        for level, g, fmt in (("top-level modules", top, str), ("modules", edges, name)):
            cs = cycles(g)
            found |= bool(cs)
            n_edges = sum(len(t) for t in g.values())
            print(f"{src}: {level}: {len(g)} with dependencies, {n_edges} edges, {len(cs)} cycle(s)")
            for c in cs:
                print("  cycle: " + " <-> ".join(fmt(m) for m in c))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["src"]))
