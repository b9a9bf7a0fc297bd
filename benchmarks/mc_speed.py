"""Time per MC-dropout sample, one at a time against samples batched as rows.

    python benchmarks/mc_speed.py                          # ptb_sota shapes, first 2,000 test tokens
    python benchmarks/mc_speed.py --tokens 82430 --batch 1 32 --backend tf

Runs ``rhn_core.mc.mc_pass`` (what ``evaluate_mc`` runs) on random weights of the
config's shape over a prefix of a random token stream (speed does not depend on
the values), and prints seconds per sample for each batch size, the speed-up over
one at a time, and the time per sample extrapolated to the full PTB test set
(82,430 tokens; the pass is linear in the stream length).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rhn_core.backends import load_backend  # noqa: E402
from rhn_core.hyperparams import resolve_config  # noqa: E402
from rhn_core.mc import mc_pass, sample_rng  # noqa: E402
from rhn_core.params import init_params, spec_from_config  # noqa: E402

PTB_TEST_TOKENS = 82430


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="ptb_sota")
    parser.add_argument("--mode", default="faithful", choices=["faithful", "corrected"])
    parser.add_argument("--tokens", type=int, default=2000, help="length of the stream prefix timed")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="samples per batch")
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    cfg = resolve_config(args.config, mc_mode=args.mode, seed=0)
    spec = spec_from_config(cfg)
    rng = np.random.default_rng(0)
    backend = load_backend(args.backend).Backend(spec, init_params(spec, rng), device="auto", dtype="float32")
    ids = rng.integers(0, spec.vocab_size, args.tokens)
    mc_pass(backend, spec, cfg, ids[:200], [sample_rng(0, 0)])  # warm-up (and tracing, for tf)
    print(f"{args.config} ({args.backend}, {args.mode}), {args.tokens:,} tokens per pass, device {backend.device}\n")
    print(f"{'samples/batch':>13} {'s/batch':>9} {'s/sample':>9} {'speed-up':>9} {'s/sample, full PTB test':>24}")
    base = None
    for b in args.batch:
        start = time.perf_counter()
        mc_pass(backend, spec, cfg, ids, [sample_rng(0, k) for k in range(b)])
        seconds = time.perf_counter() - start
        per_sample = seconds / b
        base = base or per_sample
        print(
            f"{b:>13} {seconds:>9.2f} {per_sample:>9.3f} {base / per_sample:>8.2f}x "
            f"{per_sample * PTB_TEST_TOKENS / args.tokens:>24.1f}"
        )


if __name__ == "__main__":
    main()
