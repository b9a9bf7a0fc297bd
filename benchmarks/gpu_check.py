"""The one prepared device check of the torch backend's fast paths (fused Triton kernels,
CUDA graphs, TF32 / bf16), in a single call on a GPU machine:

    python benchmarks/gpu_check.py            # GPU: checks, throughput table, precision run (< 8 min)
    python benchmarks/gpu_check.py --quick    # CPU: tiny shapes, kernels in Triton's interpreter

1. Correctness: the equivalence checks of tests/kernel_checks.py (float64 oracle; fused
   kernels and the reference path; CUDA-graph steps equal to eager ones), then the CUDA
   cases of tests/test_backends.py and tests/test_kernels.py when pytest is installed.
2. Throughput (ms per training step, exactly as the loop runs it: NumPy masks, clipped SGD
   with weight decay, state carried) for ptb_sota and enwik8_sota shapes: reference eager,
   reference + CUDA graph, fused, fused + graph, fused + graph with TF32 and bf16, and a
   cuDNN LSTM with as many parameters (as many layers as the issue's anchors).
3. Precision: the same short character-level run (enwik8_sota shape, the demo text) in
   float32, tf32 and bf16 from the same start: speed and bits per character.

Writes gpu_check.txt and gpu_check.json under --out (default $OUT, else ./gpu_check_out).
Needs only torch, triton and NumPy (no Sacred, no TensorFlow, pytest optional). Exit
status 1 when a check failed. The test suite runs --quick so that this script cannot rot.
"""

import argparse
import json
import lzma
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# The shapes of the named configs (rhn_core.hyperparams; a test checks they agree): this
# script cannot build configs, which needs Sacred.
SHAPES = {
    "ptb_sota": dict(
        vocab_size=10000,
        hidden_size=830,
        depth=10,
        num_layers=1,
        tied=True,
        init_bias=-2.0,
        batch_size=20,
        num_steps=35,
        drops=(0.25, 0.75, 0.25, 0.75),
        lstm_layers=2,
    ),
    "enwik8_sota": dict(
        vocab_size=205,
        hidden_size=1500,
        depth=10,
        num_layers=1,
        tied=False,
        init_bias=-4.0,
        batch_size=128,
        num_steps=50,
        drops=(0.10, 0.40, 0.10, 0.40),
        lstm_layers=3,
    ),
}
QUICK_SHAPE = dict(
    vocab_size=128,
    hidden_size=16,
    depth=2,
    num_layers=1,
    tied=False,
    init_bias=-2.0,
    batch_size=4,
    num_steps=5,
    drops=(0.1, 0.2, 0.1, 0.2),
    lstm_layers=1,
)
LR, WEIGHT_DECAY, MAX_GRAD_NORM = 0.2, 1e-7, 10.0
# (row label, rhn_impl, cuda_graphs, precision)
VARIANTS = [
    ("reference eager", "reference", False, "float32"),
    ("reference + CUDA graph", "reference", True, "float32"),
    ("fused (Triton)", "triton", False, "float32"),
    ("fused + CUDA graph", "triton", True, "float32"),
    ("fused + graph, TF32", "triton", True, "tf32"),
    ("fused + graph, bf16", "triton", True, "bf16"),
]


def first_line(e):
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]


def run_checks(device, quick):
    """(name, ok, seconds, error) of every equivalence check."""
    import kernel_checks as kc

    todo = []
    if quick:  # the interpreter is slow: one of each kind
        todo += [
            ("forward no_masks triton", lambda: kc.check_forward("no_masks", device)),
            ("gradients separate_masks triton", lambda: kc.check_gradients("separate_masks", device)),
            ("static steps = eager", lambda: kc.check_static_steps_match_eager(device, step_mode="static")),
        ]
    else:
        for impl in ("reference", "triton"):
            for case in sorted(kc.CASES):
                todo.append((f"forward {case} {impl}", lambda c=case, i=impl: kc.check_forward(c, device, impl=i)))
                todo.append((f"gradients {case} {impl}", lambda c=case, i=impl: kc.check_gradients(c, device, impl=i)))
            todo += [
                (f"train step float64 {impl}", lambda i=impl: kc.check_train_step("separate_masks", device, impl=i)),
                (
                    f"gradients float32 {impl}",
                    lambda i=impl: kc.check_gradients("shared_masks", device, "float32", impl=i),
                ),
                (
                    f"train step float32 {impl}",
                    lambda i=impl: kc.check_train_step("multi_tile", device, "float32", impl=i),
                ),
                (
                    f"CUDA-graph steps = eager {impl}",
                    lambda i=impl: kc.check_static_steps_match_eager(device, impl=i, step_mode="graph"),
                ),
            ]
    results = []
    for name, check in todo:
        start = time.perf_counter()
        try:
            check()
            results.append(dict(name=name, ok=True, seconds=time.perf_counter() - start, error=""))
        except Exception as e:  # noqa: BLE001 -- record and go on: one failure must not hide the rest
            results.append(dict(name=name, ok=False, seconds=time.perf_counter() - start, error=first_line(e)))
        print(
            f"  {'ok  ' if results[-1]['ok'] else 'FAIL'} {name} ({results[-1]['seconds']:.1f} s) "
            f"{results[-1]['error']}",
            flush=True,
        )
    return results


def run_pytest_cuda(timeout):
    """The CUDA-parametrised backend and kernel tests, when pytest is there (else None)."""
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return None
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "cuda",
            "tests/test_backends.py",
            "tests/test_kernels.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return dict(returncode=proc.returncode, summary=lines[-1] if lines else "", tail=lines[-30:])


def model_spec(shape):
    from rhn_core.params import ModelSpec

    return ModelSpec(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["hidden_size"],
        depth=shape["depth"],
        num_layers=shape["num_layers"],
        tied=shape["tied"],
        init_bias=shape["init_bias"],
    )


def time_rhn(shape, device, impl, graphs, precision, steps, warmup):
    """ms per training step of the torch backend, with NumPy dropout masks as in the loop."""
    import numpy as np
    from common import time_steps
    from rhn_core.backends.torch_rhn import Backend
    from rhn_core.masks import sample_masks
    from rhn_core.params import count_params, init_params

    spec = model_spec(shape)
    rng = np.random.default_rng(0)
    backend = Backend(
        spec,
        init_params(spec, rng),
        WEIGHT_DECAY,
        MAX_GRAD_NORM,
        device,
        "float32",
        options=dict(rhn_impl=impl, cuda_graphs=graphs, precision=precision),
    )
    B, T = shape["batch_size"], shape["num_steps"]
    data = rng.integers(0, spec.vocab_size, (B, T + 1))
    x, y = data[:, :-1], data[:, 1:]
    box = {"state": backend.zero_state(B), "losses": []}

    def step():
        loss, box["state"] = backend.train_step(x, y, sample_masks(rng, x, spec, *shape["drops"]), box["state"], LR)
        box["losses"].append(loss)

    seconds = time_steps(step, warmup, steps, lambda: backend.to_numpy(box["losses"]))
    losses = backend.to_numpy(box["losses"])
    assert np.all(np.isfinite(losses)), "non-finite loss"
    return seconds, count_params(spec)


def run_throughput(device, shapes, steps, warmup, variants):
    import torch
    from common import lstm_step, time_steps

    rows = []
    for name, shape in shapes.items():
        n_params = None
        for label, impl, graphs, precision in variants:
            row = dict(config=name, model=f"RHN D={shape['depth']} {label}", ms=None, error="")
            try:
                seconds, n_params = time_rhn(shape, device, impl, graphs, precision, steps, warmup)
                row.update(ms=1e3 * seconds, params=n_params)
            except Exception as e:  # noqa: BLE001
                row["error"] = first_line(e)
            rows.append(row)
            print(f"  {name} {label}: {row['ms'] and round(row['ms'], 2)} ms {row['error']}", flush=True)
            torch.cuda.empty_cache() if device == "cuda" else None
        L = shape["lstm_layers"]
        row = dict(config=name, model=f"LSTM {L} layer(s), equal params", ms=None, error="")
        try:
            target = n_params or 1
            step, n, H = lstm_step(
                shape["vocab_size"],
                shape["batch_size"],
                shape["num_steps"],
                shape["tied"],
                target,
                device,
                torch.float32,
                WEIGHT_DECAY,
                LR,
                MAX_GRAD_NORM,
                num_layers=L,
            )
            losses = []
            seconds = time_steps(
                lambda s=step, out=losses: out.append(s()), warmup, steps, lambda out=losses: torch.stack(out).cpu()
            )
            row.update(
                model=f"LSTM {L} x {H} (cuDNN)" if device == "cuda" else f"LSTM {L} x {H}", ms=1e3 * seconds, params=n
            )
        except Exception as e:  # noqa: BLE001
            row["error"] = first_line(e)
        rows.append(row)
        print(f"  {name} {row['model']}: {row['ms'] and round(row['ms'], 2)} ms {row['error']}", flush=True)
    best = {}
    for row in rows:
        if row["ms"] and row["model"].startswith("LSTM"):
            best[row["config"]] = row["ms"]
    for row in rows:
        row["vs_lstm"] = best[row["config"]] / row["ms"] if row["ms"] and row["config"] in best else None
    return rows


def demo_ids():
    """The demo text (embedded in the package) as byte ids."""
    import numpy as np

    with lzma.open(os.path.join(REPO, "rhn_core", "demo_data", "alice29.txt.xz")) as f:
        return np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)


def run_precision(device, shape, steps, precisions):
    """A short run per precision from the same start and the same masks: ms/step and BPC."""
    import math
    import numpy as np
    from rhn_core.backends.torch_rhn import Backend
    from rhn_core.masks import sample_masks
    from rhn_core.params import init_params

    spec = model_spec(shape)
    B, T = shape["batch_size"], shape["num_steps"]
    ids = demo_ids()
    valid, train = ids[-B * (2 * T + 1) :], ids[: -B * (2 * T + 1)]
    rows_train = train[: len(train) // B * B].reshape(B, -1)
    rows_valid = valid.reshape(B, -1)
    results = []
    for precision in precisions:
        row = dict(precision=precision, error="")
        try:
            rng = np.random.default_rng(1)
            backend = Backend(
                spec,
                init_params(spec, np.random.default_rng(0)),
                WEIGHT_DECAY,
                MAX_GRAD_NORM,
                device,
                "float32",
                options=dict(rhn_impl="auto", cuda_graphs=True, precision=precision),
            )
            state, losses = backend.zero_state(B), []
            start = None
            for i in range(steps):
                if i == 2:
                    backend.to_numpy(losses)
                    start = time.perf_counter()
                j = (i * T) % (rows_train.shape[1] - T - 1)
                x, y = rows_train[:, j : j + T], rows_train[:, j + 1 : j + T + 1]
                loss, state = backend.train_step(x, y, sample_masks(rng, x, spec, *shape["drops"]), state, 1.0)
                losses.append(loss)
            losses = backend.to_numpy(losses)
            elapsed = time.perf_counter() - start
            eval_state, nll = backend.zero_state(B), []
            for j in range(0, rows_valid.shape[1] - 1 - T + 1, T):
                loss, eval_state = backend.eval_step(
                    rows_valid[:, j : j + T], rows_valid[:, j + 1 : j + T + 1], eval_state
                )
                nll.append(loss)
            tail = losses[-max(1, steps // 5) :]
            row.update(
                ms=1e3 * elapsed / (steps - 2),
                train_bpc=float(tail.mean() / T / math.log(2)),
                valid_bpc=float(backend.to_numpy(nll).mean() / T / math.log(2)),
            )
        except Exception as e:  # noqa: BLE001
            row["error"] = first_line(e)
        results.append(row)
        print(f"  {precision}: {row}", flush=True)
    return results


def table(report):
    lines = [f"torch {report['torch']}, triton {report['triton']}, device: {report['device_name']}", ""]
    ok = sum(c["ok"] for c in report["checks"])
    lines.append(f"checks: {ok} of {len(report['checks'])} passed")
    lines += [f"  FAIL {c['name']}: {c['error']}" for c in report["checks"] if not c["ok"]]
    if report.get("pytest"):
        lines.append(f"pytest -k cuda: {report['pytest']['summary']}")
    lines += ["", f"{'config':<12} {'model':<34} {'params':>11} {'ms/step':>9} {'vs LSTM':>8}", "-" * 78]
    for r in report["throughput"]:
        ms = f"{r['ms']:9.2f}" if r["ms"] else f"{'-':>9}"
        vs = f"{r['vs_lstm']:7.2f}x" if r.get("vs_lstm") else f"{'-':>8}"
        lines.append(f"{r['config']:<12} {r['model']:<34} {r.get('params', 0):>11,} {ms} {vs} {r['error']}".rstrip())
    lines += [
        "",
        f"precision run ({report['precision_shape']}, {report['precision_steps']} steps, demo text):",
        f"{'precision':<10} {'ms/step':>9} {'train BPC':>10} {'valid BPC':>10}",
    ]
    for r in report["precision"]:
        if r["error"]:
            lines.append(f"{r['precision']:<10} {r['error']}")
        else:
            lines.append(f"{r['precision']:<10} {r['ms']:9.2f} {r['train_bpc']:10.4f} {r['valid_bpc']:10.4f}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, CPU (Triton interpreter): the suite's run")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder of the results")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per throughput row")
    parser.add_argument("--precision-steps", type=int, default=150, help="steps of each precision run")
    args = parser.parse_args()
    if args.quick:  # read when triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path[:0] = [REPO, os.path.join(REPO, "tests"), HERE]
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    report = dict(
        torch=torch.__version__,
        triton=triton_version,
        device=device,
        device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
    )
    print(f"torch {torch.__version__}, triton {triton_version}, {report['device_name']}", flush=True)
    start = time.perf_counter()
    print("checks:", flush=True)
    report["checks"] = run_checks(device, args.quick)
    if device == "cuda":
        report["pytest"] = run_pytest_cuda(timeout=240)
        print(f"pytest -k cuda: {report['pytest'] and report['pytest']['summary']}", flush=True)
    print("throughput:", flush=True)
    if args.quick:
        shapes, variants, steps, warmup = {"quick": QUICK_SHAPE}, VARIANTS[:4], 1, 1  # graphs: eager on CPU
        from rhn_core.backends.cpu_bf16 import has_bf16_products  # CPU bf16 is refused without the instructions

        bf16 = ("bf16",) if device == "cuda" or has_bf16_products() else ()
        precision_shape, precision_steps, precisions = "quick", 4, ("float32",) + bf16
    else:
        shapes, variants, steps, warmup = SHAPES, VARIANTS, args.steps, 3
        precision_shape, precision_steps, precisions = "enwik8_sota", args.precision_steps, ("float32", "tf32", "bf16")
    report["throughput"] = run_throughput(device, shapes, steps, warmup, variants)
    print("precision:", flush=True)
    report.update(precision_shape=precision_shape, precision_steps=precision_steps)
    precision_cfg = dict(SHAPES.get(precision_shape, QUICK_SHAPE))
    report["precision"] = run_precision(device, precision_cfg, precision_steps, precisions)
    report["seconds"] = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    text = table(report) + f"\ntotal {report['seconds']:.0f} s\n"
    with open(os.path.join(args.out, "gpu_check.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("\n" + text)
    failed = not all(c["ok"] for c in report["checks"]) or (report.get("pytest") or {}).get("returncode", 0) not in (0,)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
