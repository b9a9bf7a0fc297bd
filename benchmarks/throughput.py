"""Training throughput (tokens/s) of RHN configs, with an LSTM baseline in the same run.

    python benchmarks/throughput.py                                # ptb_sota, a small PTB RHN, demo
    python benchmarks/throughput.py --config ptb_sota --steps 5 --device cuda
    python benchmarks/throughput.py --config "ptb_sota hidden_size=200 depth=3"
    python benchmarks/throughput.py --backend torch                # only one backend
    python benchmarks/throughput.py --config ptb_sota --repeat 3   # median of 3 interleaved timings per row
    python benchmarks/throughput.py --config "ptb_sota threads=1"  # one CPU thread per framework
    python benchmarks/throughput.py --config ptb_sota --precision float32 --precision bf16   # both, one run

Each row times full training steps (of each backend) exactly as the loop runs them (masks drawn
with NumPy, clipped SGD with weight decay, state carried), after warm-up steps,
on random token ids of the config's vocabulary. The baseline is a one-layer
torch.nn.LSTM language model with about the same number of parameters, the
same B, T, loss scale and optimiser. Machines are shared and noisy: compare the
ratio columns, measured in one run, rather than absolute numbers across runs.

With several ``--precision`` values every model runs in each (the LSTM in bf16 under
autocast), interleaved; "vs LSTM" compares with the LSTM of the same precision and
"vs first" with the same model in the first precision given.
"""

import argparse
import ast
import importlib.util
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rhn_core.backends import BACKENDS, load_backend  # noqa: E402
from rhn_core.backends.torch_rhn import pick_device  # noqa: E402
from rhn_core.hyperparams import resolve_config  # noqa: E402
from rhn_core.masks import sampler  # noqa: E402
from rhn_core.params import count_params, init_params, spec_from_config  # noqa: E402
from common import lstm_step, time_steps  # noqa: E402

DEFAULT_CONFIGS = ("ptb_sota", "ptb_sota hidden_size=200 depth=3", "demo")


def parse(text):
    """'ptb_sota depth=3' -> config dict (named configs and KEY=VALUE updates, as after `with`)."""
    named, updates = [], {}
    for word in text.split():
        if "=" in word:
            key, value = word.split("=", 1)
            try:
                updates[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                updates[key] = value
        else:
            named.append(word)
    cfg = resolve_config(*named, **updates)
    if not cfg["vocab_size"]:
        cfg["vocab_size"] = 74  # the demo text's characters
    return cfg


def bench_rhn(backend_name, cfg, device, dtype, warmup, steps):
    spec = spec_from_config(cfg)
    rng = np.random.default_rng(0)
    backend = load_backend(backend_name).Backend(
        spec,
        init_params(spec, rng),
        cfg["weight_decay"],
        cfg["max_grad_norm"],
        device,
        dtype,
        threads=cfg["threads"],
        options={k: cfg[k] for k in ("rhn_impl", "cuda_graphs", "precision")},
    )
    masks = sampler(cfg, spec)
    B, T = cfg["batch_size"], cfg["num_steps"]
    data = rng.integers(0, spec.vocab_size, (B, T + 1))
    box = {"state": backend.zero_state(B), "losses": []}

    def step():
        x, y = data[:, :-1], data[:, 1:]
        loss, box["state"] = backend.train_step(x, y, masks(rng, x), box["state"], cfg["learning_rate"])
        box["losses"].append(loss)

    seconds = time_steps(step, warmup, steps, lambda: backend.to_numpy(box["losses"]))
    return count_params(spec), seconds


def bench_lstm(cfg, n_params, device, dtype, warmup, steps):
    step, n, H = lstm_step(
        cfg["vocab_size"],
        cfg["batch_size"],
        cfg["num_steps"],
        cfg["tied"],
        n_params,
        device,
        getattr(torch, dtype),
        cfg["weight_decay"],
        cfg["learning_rate"],
        cfg["max_grad_norm"],
        precision=cfg["precision"],
    )
    losses = []
    seconds = time_steps(lambda: losses.append(step()), warmup, steps, lambda: torch.stack(losses).cpu())
    return n, H, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help="named configs and KEY=VALUE, quoted; repeatable")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--backend",
        action="append",
        choices=sorted(BACKENDS),
        help="RHN backends to time (default: torch, and tf when TensorFlow is installed)",
    )
    parser.add_argument(
        "--precision",
        action="append",
        choices=("float32", "tf32", "bf16"),
        help="time every model in this precision; repeatable (default: the config's own)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time every row this many times, interleaved, and report the median (noisy machines)",
    )
    args = parser.parse_args()
    backends = args.backend or ["torch"] + (["tf"] if importlib.util.find_spec("tensorflow") else [])
    device = pick_device(args.device)
    print(
        f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads (unless a config sets "
        f"threads), {args.steps} timed steps after {args.warmup} warm-up, median of {args.repeat}\n"
    )
    header = (
        f"{'config':<36} {'model':<18} {'precision':<9} {'params':>12} {'B x T':>9} {'ms/step':>9} "
        f"{'tokens/s':>10} {'vs LSTM':>8} {'vs first':>8}"
    )
    print(header)
    print("-" * len(header))
    for text in args.config or DEFAULT_CONFIGS:
        base = parse(text)
        precisions = args.precision or [base["precision"]]
        tokens = base["batch_size"] * base["num_steps"]
        shape = f"{base['batch_size']}x{base['num_steps']}"
        times = {}  # (model, precision, n) -> seconds of each repetition; rows alternate so that load hits them all
        for _ in range(args.repeat):
            for precision in precisions:
                cfg = dict(base, precision=precision)
                for name in backends:
                    n_rhn, seconds = bench_rhn(name, cfg, device.type, args.dtype, args.warmup, args.steps)
                    times.setdefault((f"RHN D={cfg['depth']} {name}", precision, n_rhn), []).append(seconds)
                n_lstm, h_lstm, seconds = bench_lstm(cfg, n_rhn, device, args.dtype, args.warmup, args.steps)
                times.setdefault((f"LSTM H={h_lstm} torch", precision, n_lstm), []).append(seconds)
        median = {key: float(np.median(s)) for key, s in times.items()}
        lstm = {p: s for (model, p, _), s in median.items() if model.startswith("LSTM")}
        first = {model: s for (model, p, _), s in median.items() if p == precisions[0]}
        for i, ((model, precision, n), seconds) in enumerate(median.items()):
            print(
                f"{text if i == 0 else '':<36} {model:<18} {precision:<9} {n:>12,} {shape:>9} {1e3 * seconds:>9.1f} "
                f"{tokens / seconds:>10,.0f} {lstm[precision] / seconds:>7.2f}x {first[model] / seconds:>7.2f}x"
            )


if __name__ == "__main__":
    main()
