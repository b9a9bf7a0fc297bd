"""Compare logged runs: a table, and a plot of one quantity against one config key.

    python -m rhn_core.tracking.report --mongo 127.0.0.1:27017:rhn            # best valid ppl vs depth
    python -m rhn_core.tracking.report --dir runs_db --x hidden_size --logy
    python -m rhn_core.tracking.report --mongo 'mongodb://me:pw@host/rhn?authSource=admin' --status COMPLETED
    python -m rhn_core.tracking.report --dir runs_db --y valid_perplexity --no-plot
    python -m rhn_core.tracking.report --mongo 127.0.0.1:27017:rhn --sweep depth   # mean +- std over seeds

Runs come from Sacred's MongoObserver (``--mongo``, any address ``-m`` takes) or
FileStorageObserver folder (``--dir``). ``--x`` and ``--group`` are config keys
(dotted paths allowed); ``--y`` is a key of the run's info (``best_valid_perplexity``,
``full_test_perplexity``, ``nr_parameters``...) or else a logged metric, reduced to
its minimum over epochs. The table shows perplexity for word-level PTB and bits per
character for the character datasets, as the original README does. Problems end in
one ``error: ...`` line on stderr and exit status 2.
"""

import argparse
import json
import math
import sys

from ..errors import RHNError
from .sources import DirSource, MongoSource
from .table import TABLE_INFO, fmt, lookup, number, order, resolve_y, table, write_plot

CHAR_DATASETS = {"enwik8", "text8", "chars"}  # byte-level: quality reads as bits per character
TABLE_CONFIG = ("dataset", "depth", "hidden_size")


def quality(run, prefix):
    """``prefix``'s perplexity for word-level runs, bits per character for byte-level ones.

    A run stopped before its end has no ``best_valid_*`` yet (the loop stores them with the final
    figures): its best is then the lowest valid perplexity of the epochs it finished."""
    info, ppl = run["info"], number(run["info"].get(f"{prefix}_perplexity"))
    if ppl is None and prefix == "best_valid" and info.get(f"{prefix}_bits") is None:
        epochs = [v for v in ((info.get("logs") or {}).get("valid_perplexity") or []) if number(v) is not None]
        ppl = min(epochs) if epochs else None
    if run["config"].get("dataset") in CHAR_DATASETS:
        bpc = number(info.get(f"{prefix}_bits"))
        bpc = math.log2(ppl) if bpc is None and ppl else bpc  # older runs stored perplexity only
        return "-" if bpc is None else f"{bpc:.3f} bpc"
    return "-" if ppl is None else f"{ppl:.2f} ppl"


def y_shown(y, runs):
    """Whether the fixed columns already show ``y`` for every row (then no extra column)."""
    bits_key = {
        "best_valid_perplexity": False,
        "full_test_perplexity": False,
        "best_valid_bits": True,
        "full_test_bits": True,
    }
    return y in TABLE_INFO or (
        y in bits_key and all((r["config"].get("dataset") in CHAR_DATASETS) == bits_key[y] for r in runs)
    )


def columns(args, ylabel, runs):
    """(header, cell function, right-aligned) for each column of the table."""
    cols = [("id", lambda r: fmt(r["id"]), True), ("status", lambda r: fmt(r["status"]), False)]
    cols += [(k, lambda r, k=k: fmt(r["config"].get(k)), k != "dataset") for k in TABLE_CONFIG]
    cols += [
        ("epochs", lambda r: fmt(r["info"].get("epoch_nr")), True),
        ("params", lambda r: fmt(r["info"].get("nr_parameters"), ","), True),
        ("best epoch", lambda r: fmt(r["info"].get("best_val_epoch")), True),
        ("best valid", lambda r: quality(r, "best_valid"), True),
        ("full test", lambda r: quality(r, "full_test"), True),
    ]
    for key, getter in ((args.group, lambda r: r["group"]), (args.x, lambda r: r["x"])):
        if key not in TABLE_CONFIG and key not in [c[0] for c in cols]:
            cols.append((key, (lambda g: lambda r: fmt(g(r)))(getter), True))
    if not y_shown(args.y, runs):
        cols.append((ylabel, lambda r: fmt(r["y"]), True))
    return cols


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error of this command
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv):
    p = Parser(
        prog="python -m rhn_core.tracking.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mongo", metavar="SPEC", help="db, host:port:db or a mongodb:// URL")
    src.add_argument("--dir", metavar="DIR", help="a FileStorageObserver folder")
    p.add_argument("--x", default="depth", help="config key of the x axis (default: depth)")
    p.add_argument("--y", default="best_valid_perplexity", help="info key, or metric (its minimum)")
    p.add_argument("--group", default="dataset", help="config key giving one series per value")
    p.add_argument("--status", action="append", default=[], help="keep runs with this status (repeatable, a,b)")
    p.add_argument("--plot", default="rhn_report.png", help="where to write the plot")
    p.add_argument("--no-plot", action="store_true", help="only print the table")
    p.add_argument("--logy", action="store_true", help="logarithmic y axis")
    p.add_argument(
        "--sweep",
        metavar="NAME",
        help="the runs of sweep NAME (rhn-sweep): one row per setting of "
        "its swept keys, the mean and std over the --over keys, error bars in the plot",
    )
    p.add_argument(
        "--over",
        action="append",
        default=[],
        metavar="KEY",
        help="with --sweep: swept keys averaged over (default seed; repeatable)",
    )
    return p.parse_args(argv)


def report(args):
    source = MongoSource(args.mongo) if args.mongo is not None else DirSource(args.dir)
    try:
        report_from(source, args)
    finally:
        source.close()


def report_from(source, args):
    statuses = {s.strip().upper() for arg in args.status for s in arg.split(",") if s.strip()}
    if getattr(args, "sweep", None):
        from ..sweep.report import report_sweep

        return report_sweep(source, args, statuses)
    runs = [r for r in source.runs() if not statuses or str(r["status"]).upper() in statuses]
    if not runs:
        wanted = f" with status {', '.join(sorted(statuses))}" if statuses else ""
        raise RHNError(f"no runs{wanted} in {source.label}: check the address or folder, or drop --status")
    if all(lookup(r["config"], args.x) is None for r in runs):
        raise RHNError(f"no run has config key {args.x!r}: pick --x from the config, e.g. depth, hidden_size")
    for r in runs:
        r["x"], group = lookup(r["config"], args.x), lookup(r["config"], args.group)
        r["group"] = json.dumps(group) if isinstance(group, (list, dict)) else group  # a set member
    ylabel = resolve_y(source, runs, args.y)
    runs.sort(key=lambda r: (order(r["group"]), order(r["x"]), order(r["id"])))
    print(f"{len(runs)} runs from {source.label}" + (f", status {', '.join(sorted(statuses))}" if statuses else ""))
    print("\n".join(table(columns(args, ylabel, runs), runs)))
    if args.no_plot:
        return
    points = [r for r in runs if r["x"] is not None and number(r["y"]) is not None]
    if len(points) < len(runs):
        print(f"{len(runs) - len(points)} of {len(runs)} runs lack {args.x} or {ylabel}: left out of the plot")
    if not points:
        raise RHNError(f"no run has both {args.x} and {ylabel} to plot: pick other --x/--y or use --no-plot")
    write_plot(points, args, f"{ylabel} vs {args.x}\n{source.label}", ylabel)


def run_command(parse, action, argv):
    """``action(parse(argv))``; its return value is the exit status (None: 0), an RHNError one
    ``error: ...`` line on stderr and status 2. Shared by the commands of the package."""
    try:
        args = parse(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return e.code
    try:
        return action(args) or 0
    except RHNError as e:
        from .mongo import redact

        print(f"error: {redact(e)}".replace("\n", " "), file=sys.stderr)
        return 2


def main(argv=None):
    return run_command(parse_args, report, argv)


if __name__ == "__main__":
    sys.exit(main())
