"""CPU threads against speed: the torch ptb_sota training step with 1 and with the default
number of OpenMP threads, and the TF step (its own thread pool), interleaved in one run.

    python benchmarks/threads_vs_tf.py                 # ptb_sota, 2 repetitions
    python benchmarks/threads_vs_tf.py --repeat 3 --config "ptb_sota hidden_size=200 depth=3"

Why: torch's OpenMP regions need every thread scheduled at once; on cores shared with
other work a 2-thread step can take several times as long as a 1-thread one (each of the
~1,000 small products per step waits for a descheduled thread). ``threads=1`` is the
config key that uses one thread (``benchmarks/threads.py``: runs side by side). The median of each row, and its ratio to TF, are printed.
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rhn_core.backends import load_backend  # noqa: E402
from rhn_core.masks import sampler  # noqa: E402
from rhn_core.params import init_params, spec_from_config  # noqa: E402
from throughput import parse  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="ptb_sota", help="named configs and KEY=VALUE, quoted")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved timings per row (median reported)")
    args = parser.parse_args()
    cfg = parse(args.config)
    spec = spec_from_config(cfg)
    rng = np.random.default_rng(0)
    names = ["torch"] + (["tf"] if importlib.util.find_spec("tensorflow") else [])
    backends = {
        n: load_backend(n).Backend(
            spec,
            init_params(spec, np.random.default_rng(0)),
            cfg["weight_decay"],
            cfg["max_grad_norm"],
            "cpu",
            "float32",
        )
        for n in names
    }
    masks = sampler(cfg, spec)
    B, T = cfg["batch_size"], cfg["num_steps"]
    data = rng.integers(0, spec.vocab_size, (B, T + 1))
    x, y = data[:, :-1], data[:, 1:]
    default = torch.get_num_threads()
    rows = [("torch", 1), ("torch", default)] + [("tf", "own pool")] * ("tf" in backends)
    times = {row: [] for row in rows}
    for _ in range(args.repeat):
        for name, threads in rows:
            if name == "torch":
                torch.set_num_threads(threads)
            backend, state = backends[name], backends[name].zero_state(B)
            loss, state = backend.train_step(x, y, masks(rng, x), state, cfg["learning_rate"])  # warm-up
            backend.to_numpy([loss])
            start = time.perf_counter()
            loss, state = backend.train_step(x, y, masks(rng, x), state, cfg["learning_rate"])
            backend.to_numpy([loss])
            times[name, threads].append(time.perf_counter() - start)
    torch.set_num_threads(default)
    tf_s = np.median(times["tf", "own pool"]) if "tf" in backends else None
    print(f"{args.config}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, median of {args.repeat}\n")
    print(f"{'backend':<8} {'threads':>9} {'ms/step':>10} {'vs TF':>7}")
    for (name, threads), seconds in times.items():
        ms = 1e3 * np.median(seconds)
        print(f"{name:<8} {threads!s:>9} {ms:10.1f} {tf_s / np.median(seconds) if tf_s else float('nan'):6.2f}x")


if __name__ == "__main__":
    main()
