#!/usr/bin/env python3
"""Finds import circles between the modules of a crate (exit 1 if any).

    scripts/module-cycles.py host/src          # file-level modules
    scripts/module-cycles.py host/src --top    # top-level modules only
    scripts/module-cycles.py host/src --edges  # print the graph too

A module is a file (`a/b.rs` or `a/b/mod.rs` is `a::b`); an edge is any
`crate::…` path in its code (comments and `#[cfg(test)] mod tests` blocks
are skipped: a doc link or a test is not a dependency). A module and its own
children are not a circle. Python and regular expressions rather than
cargo-modules: that tool builds rust-analyzer (many minutes in CI) for a
question this answers in a second.
"""
import os
import re
import sys


def modules(root):
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            if parts and parts[-1] == "tests":
                continue
            found["::".join(parts)] = path
    return found


def graph(root):
    mods = modules(root)

    def owner(path):
        parts = path.split("::")
        while parts:
            if "::".join(parts) in mods:
                return "::".join(parts)
            parts.pop()
        return None

    edges = {m: set() for m in mods}
    for module, path in mods.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r"^\s*//.*$", "", text, flags=re.M)
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
        paths = re.findall(r"crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text)
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            paths += [item.strip() for item in group.split(",")]
        for target in filter(None, map(owner, paths)):
            related = target == module or module.startswith(target + "::") or target.startswith(module + "::")
            if not related:
                edges[module].add(target)
    return edges


def top_level(edges):
    top = {}
    for module, targets in edges.items():
        head = module.split("::")[0]
        top.setdefault(head, set())
        top[head] |= {t.split("::")[0] for t in targets} - {head}
    return top


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main():
    args = sys.argv[1:]
    root = next((a for a in args if not a.startswith("--")), "host/src")
    edges = graph(root)
    if "--top" in args:
        edges = top_level(edges)
    if "--edges" in args:
        for module in sorted(edges):
            print(f"{module or '(crate root)'} -> {', '.join(sorted(edges[module]))}")
    found = circles(edges)
    for component in found:
        print(f"import circle of {len(component)} modules: {', '.join(component)}")
    print(f"{root}: {len(edges)} modules, {len(found)} import circles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
