"""What logging a run costs training: no observer against ``-F`` and ``-m`` (MongoDB), same run.

    python benchmarks/tracking_overhead.py                       # demo, 3 epochs, SecantusDB started here
    python benchmarks/tracking_overhead.py --mongo localhost:27017:rhn_bench --repeats 3
    python benchmarks/tracking_overhead.py --with "demo hidden_size=512" --epochs 2

Each mode trains the same config in a fresh process (``rhn_train_torch.py``),
interleaved over ``--repeats`` rounds. Training speed is read from the run's own
per-epoch line (``Epoch: N took S s, R chars/s``; epoch 1 is left out as warm-up)
and the whole command's wall time is taken too. Every epoch each observed run stores
``last.npz`` (and ``best.npz`` when valid improves), so the MongoDB column includes
GridFS uploads from the writer thread. Machines are shared and noisy: read the ratio
column, measured in one run.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH_LINE = re.compile(r"^Epoch: (\d+) took [\d.]+ s, ([\d,]+) (?:char|word)s/s", re.MULTILINE)


def train(observer_args, config, epochs, save_dir):
    command = [
        sys.executable,
        "-W",
        "ignore",
        os.path.join(REPO, "rhn_train_torch.py"),
        *observer_args,
        "with",
        *config.split(),
        f"max_max_epoch={epochs}",
        f"save_dir={save_dir}",
        "progress=False",
    ]
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - start
    if result.returncode != 0:
        sys.exit(
            f"training failed ({' '.join(observer_args) or 'no observer'}): {result.stderr.strip().splitlines()[-1]}"
        )
    speeds = [float(r.replace(",", "")) for e, r in EPOCH_LINE.findall(result.stdout) if int(e) > 1]
    return statistics.mean(speeds), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--with", dest="config", default="demo", help="named configs and KEY=VALUE, as after `with`")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mongo", help="a MongoDB to use (default: start SecantusDB for this benchmark)")
    args = parser.parse_args()
    server = None
    if args.mongo is None:
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from mongo_server import MongoServer  # the suite's SecantusDB launcher (pip install secantusdb)

        server = MongoServer(tempfile.mkdtemp(prefix="rhn-bench-db-")).start()
        args.mongo = server.spec("rhn_bench")
    work = tempfile.mkdtemp(prefix="rhn-bench-")
    modes = {"none": [], "file (-F)": ["-F", os.path.join(work, "file_runs")], "mongodb (-m)": ["-m", args.mongo]}
    results = {mode: [] for mode in modes}
    try:
        for r in range(args.repeats):
            for mode, observer_args in modes.items():
                results[mode].append(train(observer_args, args.config, args.epochs, os.path.join(work, f"{r}")))
    finally:
        if server is not None:
            server.stop()
    base = statistics.mean(s for s, _ in results["none"])
    base_wall = statistics.mean(w for _, w in results["none"])
    print(f"config: {args.config}, {args.epochs} epochs, {args.repeats} runs per mode (epoch 1 = warm-up)")
    print(f"{'observer':<14} {'chars|words/s':>14} {'ratio':>7} {'wall s':>8} {'ratio':>7}")
    for mode, runs in results.items():
        speed, wall = statistics.mean(s for s, _ in runs), statistics.mean(w for _, w in runs)
        print(f"{mode:<14} {speed:>14,.0f} {speed / base:>7.3f} {wall:>8.1f} {wall / base_wall:>7.3f}")


if __name__ == "__main__":
    main()
