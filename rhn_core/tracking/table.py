"""The table and plot of a report, shared by the run report (``rhn_core.tracking.report``) and the
sweep report (``rhn_core.sweep.report``): cells, sort order, the y quantity, the plot written atomically."""

import math
import os
import tempfile

from ..errors import RHNError

TABLE_INFO = {"epoch_nr", "nr_parameters", "best_val_epoch"}  # info keys with their own column
# What the training loop stores in info: these name info keys even where no selected run has
# them yet (FAILED runs), rather than being looked for among the metrics.
INFO_KEYS = TABLE_INFO | {
    "best_valid_perplexity",
    "best_valid_bits",
    "full_best_valid_perplexity",
    "full_best_valid_bits",
    "full_test_perplexity",
    "full_test_bits",
    "run_dir",
}


def lookup(mapping, key):
    """``mapping[a][b]`` for ``key`` "a.b"; None where any part is missing."""
    for part in key.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return None
        mapping = mapping[part]
    return mapping


def number(value):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def resolve_y(source, runs, y):
    """Fill run["y"]; the y-axis label. An info key wins; else the metric's minimum over epochs."""
    if y in INFO_KEYS or any(lookup(r["info"], y) is not None for r in runs):
        for r in runs:
            r["y"] = lookup(r["info"], y)
        return y
    series = source.metric(y, [r["id"] for r in runs])
    if not any(series.values()):
        keys = sorted({k for r in runs for k in r["info"] if k != "logs"})
        raise RHNError(
            f"no run has info key or metric {y!r}: pick --y from the metrics "
            f"(valid_perplexity, train_perplexity, ...) or info keys ({', '.join(keys) or 'none'})"
        )
    for r in runs:
        values = [v for v in series.get(r["id"], []) if number(v) is not None]
        r["y"] = min(values) if values else None
    return f"min {y}"


def fmt(value, spec=""):
    if value is None:
        return "-"
    if spec and number(value) is not None:
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 10 else f"{value:.4g}"
    return str(value)


def table(cols, runs):
    cells = [[c[0] for c in cols]] + [[c[1](r) for c in cols] for r in runs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return [
        "  ".join(cell.rjust(w) if c[2] else cell.ljust(w) for cell, w, c in zip(row, widths, cols)).rstrip()
        for row in cells
    ]


def order(value):
    """Sort key putting numbers first (by value), then text, then missing values."""
    if number(value) is not None:
        return (0, value, "")
    return (2, 0, "") if value is None else (1, 0, str(value))


def plot(points, args, ylabel, title):
    """Write the plot to ``args.plot`` via a temporary file, so readers never see half a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede the pyplot import
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group in sorted({r["group"] for r in points}, key=order):
        series = sorted((r for r in points if r["group"] == group), key=lambda r: (order(r["x"]), order(r["id"])))
        xs, ys, label = [r["x"] for r in series], [r["y"] for r in series], f"{args.group}={fmt(group)}"
        if any("std" in r for r in series):  # sweep groups: the mean over seeds, a bar of one std
            ax.errorbar(xs, ys, yerr=[r["std"] for r in series], marker="o", capsize=4, label=label)
        else:
            ax.plot(xs, ys, marker="o", label=label)
    ax.set(xlabel=args.x, ylabel=ylabel, title=title)
    if args.logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    folder = os.path.dirname(os.path.abspath(args.plot))
    kind = os.path.splitext(args.plot)[1].lstrip(".").lower() or "png"
    fd, tmp = tempfile.mkstemp(suffix=f".{kind}", prefix=".rhn_report_", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=kind, dpi=120, bbox_inches="tight")
        os.replace(tmp, args.plot)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        plt.close(fig)


def write_plot(points, args, title, ylabel):
    try:
        plot(points, args, ylabel, title)
    except (OSError, ValueError) as e:
        raise RHNError(f"cannot write the plot to {args.plot} ({e}): pick another --plot path or --no-plot")
    print(f"plot written to {args.plot}")
