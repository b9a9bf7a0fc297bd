"""Data-parallel scaling: training tokens/s on 1, 2, ... processes (torchrun), ratio to one.

    python benchmarks/data_parallel.py                       # this machine: 1 and 2 gloo processes on CPU
    python benchmarks/data_parallel.py --procs 1 2 4 8 --device cuda --config enwik8_sota   # a GPU node

Every row starts ``torchrun --nproc_per_node=N`` on this script's worker, which times the
training step exactly as the loop runs it on N ranks (the global batch's masks drawn with
NumPy and sliced, each rank's rows, the gradient all-reduce, clipping, the update) on random
ids of the config's vocabulary, after warm-up steps, and reports global tokens (B x T per
step) per second. A second column times the gradient all-reduce alone (one flat buffer of
all parameters, as the step sends it). The baseline is the 1-process row of the same run;
on a CPU each process gets --threads threads (the 1-process row is also shown with all of
them). Machines are shared and noisy: read the ratios.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DEFAULT = "enwik8_sota hidden_size=256 depth=4 batch_size=32"


def worker(args):
    import torch
    import torch.distributed as dist

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from throughput import parse
    from rhn_core.backends.torch_rhn import Backend
    from rhn_core.distributed import detect, shard_masks
    from rhn_core.masks import sampler
    from rhn_core.params import count_params, init_params, spec_from_config

    torch.set_num_threads(args.threads)
    cfg = parse(args.config)
    world = detect("torch")
    spec = spec_from_config(cfg, cfg["vocab_size"])
    params = init_params(spec, np.random.default_rng(0))
    backend = Backend(
        spec,
        params,
        cfg["weight_decay"],
        cfg["max_grad_norm"],
        args.device,
        "float32",
        **(dict(world=world, timeout=600) if world.size > 1 else {}),
    )
    B, T = cfg["batch_size"], cfg["num_steps"]
    mine = world.rows(B)
    rng, masks = np.random.default_rng(1), sampler(cfg, spec)
    ids = np.random.default_rng(2).integers(0, cfg["vocab_size"], (args.warmup + args.steps, B, T + 1))
    state = backend.zero_state(mine.stop - mine.start)

    def sync():
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        if world.size > 1:
            dist.barrier()

    def step(i):
        nonlocal state
        x, y = ids[i, :, :-1], ids[i, :, 1:]
        objective, state = backend.train_step(x[mine], y[mine], shard_masks(masks(rng, x), mine), state, 0.1)
        return objective

    for i in range(args.warmup):
        step(i)
    sync()
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    sync()
    seconds = time.perf_counter() - start
    reduce_ms = 0.0
    if world.size > 1:  # the all-reduce alone: a flat buffer of every parameter
        flat = torch.zeros(count_params(spec) + 1, device=backend.device)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            dist.all_reduce(flat)
        sync()
        reduce_ms = (time.perf_counter() - t0) / args.steps * 1e3
    if world.chief:
        print(
            f"RESULT {world.size} {B * T * args.steps / seconds:.1f} {seconds / args.steps * 1e3:.2f} "
            f"{reduce_ms:.2f} {count_params(spec)}",
            flush=True,
        )
    backend.comm.close()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, procs, threads):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={procs}",
        f"--master_port={free_port()}",
        os.path.abspath(__file__),
        "--worker",
        "--config",
        args.config,
        "--device",
        args.device,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(threads),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    if not lines:
        sys.exit(f"torchrun with {procs} processes failed:\n{out.stderr[-3000:]}")
    _, size, tps, ms, reduce_ms, n_params = lines[0].split()
    return float(tps), float(ms), float(reduce_ms), int(n_params)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=DEFAULT)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="threads per process (CPU)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    cpu = args.device == "cpu"
    runs = [(n, args.threads) for n in args.procs]
    if cpu and max(args.procs) > 1:  # one process may use all the cores the others use together
        runs.insert(1, (1, max(args.procs) * args.threads))
    rows = [(n, t, *launch(args, n, t)) for n, t in runs]
    base = next(r[2] for r in rows if r[0] == 1 and r[1] == args.threads)
    print(f"config: {args.config} ({rows[0][5]:,} parameters), device {args.device}, {args.steps} timed steps")
    print("| run | tokens/s | ratio to 1 process | ms/step | all-reduce alone, ms/step |")
    print("| --- | --- | --- | --- | --- |")
    for n, t, tps, ms, reduce_ms, _ in rows:
        what = f"{n} process{'es' if n > 1 else ''} x " + (
            f"{t} thread{'s' if t > 1 else ''}" if cpu else f"1 {args.device}"
        )
        print(f"| {what} | {tps:,.0f} | {tps / base:.2f} | {ms:.1f} | {reduce_ms:.1f} |")


if __name__ == "__main__":
    main()
