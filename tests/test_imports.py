"""The import graph of rhn_core has no cycle: every ``import`` of the package, at the top of a module or
inside a function, read from the source (ast), points from a higher layer to a lower one."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rhn_core")


def modules():
    """{dotted name: (path, is a package)} of every module of rhn_core."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
                package = rel[-1] == "__init__"
                found[".".join(rel[:-1] if package else rel)] = (os.path.join(folder, name), package)
    return found


def imports_of(name, path, package, known):
    """The rhn_core modules ``name`` imports, anywhere in its source."""
    here = name if package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(known)  # 'from . import module'
            # names that are no module are attributes of base's __init__; a submodule needs only its own file
            # (its package is already importing or imported: no edge back to it)
            targets |= submodules if len(submodules) == len(node.names) else submodules | {base}
    return {t for t in targets if t in known and t != name}


def graph():
    known = modules()
    return {name: imports_of(name, path, package, known) for name, (path, package) in known.items()}


def find_cycle(edges):
    """One cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert "rhn_core.tracking.mongo" in edges["rhn_core.tracking.report"]  # an import inside a function
    assert "rhn_core.backends.base" in edges["rhn_core.runtime"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_rhn_core_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def reachable(edges, start):
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_loop_knows_nothing_of_experiment_tracking():
    """Training, evaluation, MC and sampling run without rhn_core.tracking (MongoDB, observers): a run in a
    database is resolved by the experiment, which hands the loop its download."""
    edges = graph()
    assert reachable({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == {"b", "c"}
    assert any(m.startswith("rhn_core.tracking") for m in reachable(edges, "rhn_core.experiment"))  # the check sees it
    for module in ("rhn_core.loop", "rhn_core.runtime", "rhn_core.resume", "rhn_core.mc", "rhn_core.sample"):
        tracking = sorted(m for m in reachable(edges, module) if m.startswith("rhn_core.tracking"))
        assert not tracking, f"{module} imports {', '.join(tracking)}"
