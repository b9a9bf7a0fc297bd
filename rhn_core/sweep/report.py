"""``report --sweep NAME``: the runs of one sweep grouped by its swept keys, mean and std over seeds.

A run of a sweep stores ``meta.sweep = {name, key, values}``; a run stopped and
resumed is several pieces with the same key, of which the latest counts. Runs
whose swept values differ only in the ``--over`` keys (default ``seed``) form one
row: how many there are, their states, how many have a ``--y`` figure (n), its mean
and its standard deviation (the sample one, n - 1; none for a single run). The plot shows the mean
against ``--x`` with a bar of one standard deviation.
"""

import json
import statistics

from ..errors import RHNError
from ..tracking.table import fmt, lookup, number, order, resolve_y, table, write_plot
from .state import pieces_by_key


def latest_pieces(runs):
    """The latest piece of each run of the sweep, with ``pieces`` (how many there were)."""
    latest = []
    for pieces in pieces_by_key(runs).values():
        run = dict(pieces[-1], pieces=len(pieces))
        run["values"] = run["meta"]["sweep"].get("values") or {}
        latest.append(run)
    return latest


def groups_of(runs, over):
    """{setting: runs} where a setting is the swept values without the ``over`` keys."""
    groups = {}
    for run in runs:
        setting = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in run["values"].items() if k not in over))
        groups.setdefault(setting, []).append(run)
    return groups


def summary(setting, runs, args):
    ys = [r["y"] for r in runs if number(r["y"]) is not None]
    states = {}
    for r in runs:
        states[str(r["status"])] = states.get(str(r["status"]), 0) + 1
    first = runs[0]
    params = [p for p in (lookup(r["info"], "nr_parameters") for r in runs) if number(p) is not None]
    return {
        "setting": dict((k, json.loads(v)) for k, v in setting),
        "runs": len(runs),
        "n": len(ys),
        "states": ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
        "params": round(statistics.mean(params)) if params else None,
        "mean": statistics.mean(ys) if ys else None,
        "std": statistics.stdev(ys) if len(ys) > 1 else None,
        "x": lookup(first["config"], args.x),
        "group": _hashable(lookup(first["config"], args.group)),
        "pieces": sum(r["pieces"] for r in runs),
    }


def _hashable(value):
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def report_sweep(source, args, statuses):
    runs = latest_pieces(source.runs(sweep=args.sweep))
    runs = [r for r in runs if not statuses or str(r["status"]).upper() in statuses]
    if not runs:
        wanted = f" with status {', '.join(sorted(statuses))}" if statuses else ""
        raise RHNError(
            f"no run of sweep {args.sweep!r}{wanted} in {source.label}: check --sweep (rhn-sweep "
            f"status lists a sweep's runs) or drop --status"
        )
    over = set(args.over or ["seed"])
    ylabel = resolve_y(source, runs, args.y)
    rows = [summary(setting, group, args) for setting, group in groups_of(runs, over).items()]
    keys = sorted({k for row in rows for k in row["setting"]})
    rows.sort(key=lambda r: (order(r["group"]), order(r["x"]), [order(r["setting"].get(k)) for k in keys]))
    cols = [(k, lambda r, k=k: fmt(r["setting"].get(k)), True) for k in keys]
    cols += [
        ("runs", lambda r: str(r["runs"]), True),
        ("states", lambda r: r["states"], False),
        ("params", lambda r: fmt(r["params"], ","), True),
        ("n", lambda r: str(r["n"]), True),
        (f"mean {ylabel}", lambda r: fmt(r["mean"], ".3f"), True),
        ("std", lambda r: fmt(r["std"], ".3f"), True),
    ]
    print(
        f"sweep {args.sweep}: {len(runs)} runs ({sum(r['pieces'] for r in rows)} pieces) from {source.label}; "
        f"mean and std over {', '.join(sorted(over))}"
    )
    print("\n".join(table(cols, rows)))
    if args.no_plot:
        return
    points = [
        {"id": i, "x": r["x"], "y": r["mean"], "std": r["std"] or 0.0, "group": r["group"]}
        for i, r in enumerate(rows)
        if r["x"] is not None and number(r["mean"]) is not None
    ]
    if not points:
        raise RHNError(f"no group has both {args.x} and {ylabel} to plot: pick other --x/--y or use --no-plot")
    write_plot(
        points,
        args,
        f"sweep {args.sweep}: {ylabel} vs {args.x} (mean, bar: std over {', '.join(sorted(over))})",
        ylabel,
    )
