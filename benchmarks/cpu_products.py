"""The products of one CPU training step, through PyTorch's default (MKL) and through
oneDNN (``rhn_impl=onednn``), in one run: why ``auto`` picks oneDNN for float32 on CPU.

    python benchmarks/cpu_products.py                       # ptb_sota shapes, 2 threads
    python benchmarks/cpu_products.py --threads 1 --repeat 7
    python benchmarks/cpu_products.py --config "enwik8_sota"

Each row runs the products of one step of that kind with the step's shapes (B x T
positions, D micro-layers) and reports the best of ``--repeat`` timings; the two columns
alternate inside every repetition so that a change of load hits both. The weights are
read as the step reads them (transposed and sliced views), as float32.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rhn_core.backends.torch_kernels import onednn  # noqa: E402
from rhn_core.backends.torch_kernels.eager import TorchSteps  # noqa: E402
from rhn_core.params import spec_from_config  # noqa: E402
from throughput import parse  # noqa: E402


def workloads(B, T, H, D, V, in_size):
    """(row name, the (a, b) of every product of that kind in one step), in step order."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.rand(*shape, generator=g) * 0.08 - 0.04
    R = rand(D, H, 2 * H)
    s, d = rand(B, H), rand(B, 2 * H)
    S, dk = rand(B * T, H), rand(B * T, 2 * H)
    out, dlogits, E, x, W = rand(B * T, H), rand(B * T, V), rand(V, H), rand(B * T, in_size), rand(in_size, 2 * H)
    return [
        ("micro-step forward  s R_k", [(s, R[k]) for _ in range(T) for k in range(D)]),
        ("micro-step backward d R_k^T", [(d, R[k].t()) for _ in range(T) for k in range(D)]),
        ("weight gradients    S^T d", [(S.t(), dk)] * D),
        ("input projection    x W, 2 grads", [(x, W), (dk, W.t()), (x.t(), dk)]),
        ("softmax             o E^T, 2 grads", [(out, E.t()), (dlogits, E), (out.t(), dlogits)]),
    ]


def run(product, calls):
    start = time.perf_counter()
    for a, b in calls:
        product(a, b)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="ptb_sota", help="named configs and KEY=VALUE, quoted (shapes only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not onednn.usable("cpu", torch.float32):
        sys.exit("this PyTorch was built without oneDNN: nothing to compare")
    cfg = parse(args.config)
    spec = spec_from_config(cfg)
    B, T, H, D, V = cfg["batch_size"], cfg["num_steps"], spec.hidden_size, spec.depth, spec.vocab_size
    torch.set_num_threads(args.threads)
    print(
        f"{args.config}: B {B}, T {T}, H {H}, D {D}, V {V}; torch {torch.__version__}, {args.threads} threads, "
        f"best of {args.repeat}\n"
    )
    header = f"{'products of one step':<40} {'calls':>6} {'default ms':>11} {'oneDNN ms':>10} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    engines = (TorchSteps().product, onednn.matmul)
    totals = [0.0, 0.0]
    for name, calls in workloads(B, T, H, D, V, spec.in_size):
        best = [float("inf"), float("inf")]
        for product in engines:  # warm-up
            run(product, calls[:3])
        for _ in range(args.repeat):
            for i, product in enumerate(engines):
                best[i] = min(best[i], run(product, calls))
        totals = [t + b for t, b in zip(totals, best)]
        print(f"{name:<40} {len(calls):>6} {1e3 * best[0]:>11.1f} {1e3 * best[1]:>10.1f} {best[0] / best[1]:>8.2f}x")
    print(f"{'all':<40} {'':>6} {1e3 * totals[0]:>11.1f} {1e3 * totals[1]:>10.1f} {totals[0] / totals[1]:>8.2f}x")


if __name__ == "__main__":
    main()
