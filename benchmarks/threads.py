"""CPU threads: one run alone against two runs side by side, at 1 and at all cores' threads.

    python benchmarks/threads.py                        # the demo's shapes, torch backend
    python benchmarks/threads.py --config "ptb_sota hidden_size=200 depth=3" --steps 20

Each row starts its runs as separate processes at once; every run trains --steps steps
(after 3 warm-up steps) exactly as the loop does, with ``threads=N``. Columns: wall
seconds per step of each run, CPU seconds (user + system, all threads) per step, and
the throughput of the whole row (steps per second summed over its runs) against the
first row. CPU time well above wall time x busy cores means threads spinning while
they wait for a core. ``OMP_WAIT_POLICY=PASSIVE`` rows set that variable in the runs.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rhn_core.backends import cpu_threads  # noqa: E402

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from benchmarks.throughput import parse
from rhn_core.backends import load_backend
from rhn_core.masks import sampler
from rhn_core.params import init_params, spec_from_config
cfg = parse({config!r})
spec = spec_from_config(cfg, cfg["vocab_size"])
rng = np.random.default_rng(0)
backend = load_backend({backend!r}).Backend(spec, init_params(spec, rng), cfg["weight_decay"], cfg["max_grad_norm"],
                                            device="cpu", threads={threads})
masks, B, T = sampler(cfg, spec), cfg["batch_size"], cfg["num_steps"]
state = backend.zero_state(B)
def steps(n, state):
    for _ in range(n):
        x = rng.integers(0, spec.vocab_size, (B, T + 1))
        J, state = backend.train_step(x[:, :-1], x[:, 1:], masks(rng, x[:, :-1]), state, 0.1)
    backend.to_numpy([J])
    return state
state = steps(3, state)
wall, cpu = time.perf_counter(), time.process_time()
steps({steps}, state)
print(json.dumps(dict(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu)))
"""


def run_row(args, runs, threads, passive=False):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    code = CHILD.format(
        root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        config=args.config,
        backend=args.backend,
        threads=threads,
        steps=args.steps,
    )
    procs = [
        subprocess.Popen([sys.executable, "-W", "ignore", "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(runs)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--backend", default="torch", choices=["torch", "tf"])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cores = cpu_threads(0) if "OMP_NUM_THREADS" not in os.environ else len(os.sched_getaffinity(0))
    rows = [(1, 1, False), (1, cores, False), (2, 1, False), (2, cores, False), (2, cores, True)]
    print(f"config: {args.config}, {args.backend} backend, {cores} cores, {args.steps} timed steps per run\n")
    header = f"{'runs':>4} {'threads':>7} {'wait policy':>11} {'s/step':>15} {'CPU s/step':>15} {'steps/s':>8} {'vs first':>8}"
    print(header + "\n" + "-" * len(header))
    base = None
    for runs, threads, passive in rows:
        results = run_row(args, runs, threads, passive)
        per_step = [r["wall"] / args.steps for r in results]
        cpu = [r["cpu"] / args.steps for r in results]
        rate = sum(1 / s for s in per_step)
        base = base or rate
        print(
            f"{runs:>4} {threads:>7} {'PASSIVE' if passive else 'default':>11} "
            f"{' '.join(f'{s:.3f}' for s in per_step):>15} {' '.join(f'{c:.3f}' for c in cpu):>15} "
            f"{rate:8.2f} {rate / base:7.2f}x"
        )


if __name__ == "__main__":
    main()
