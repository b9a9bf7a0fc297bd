"""The torch backend's CPU fast path (``rhn_impl=onednn``: every product of a float32 step
in oneDNN) against the float64 oracle, with the checks the Triton kernels pass
(kernel_checks.py): forward, every gradient, a clipped SGD step, the static-buffer step."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kernel_checks as checks  # noqa: E402
from rhn_core.backends.torch_kernels import onednn, resolve_impl  # noqa: E402
from rhn_core.backends.torch_kernels.eager import TorchSteps  # noqa: E402
from rhn_core.errors import RHNError  # noqa: E402

pytestmark = pytest.mark.skipif(not onednn.usable("cpu", torch.float32), reason="this PyTorch has no oneDNN")


@pytest.mark.parametrize("case", sorted(checks.CASES))
def test_onednn_forward_and_gradients_against_the_oracle(case):
    checks.check_forward(case, "cpu", dtype="float32", impl="onednn")
    checks.check_gradients(case, "cpu", dtype="float32", impl="onednn")


def test_onednn_train_step_against_the_oracle():
    checks.check_train_step("separate_masks", "cpu", dtype="float32", impl="onednn")
    checks.check_train_step("multi_tile", "cpu", dtype="float32", impl="onednn")


def test_onednn_products_of_views_equal_torch_mm():
    """oneDNN reads the weights through transposed and sliced views (never copied): each
    layout the steps hand it gives torch.mm's product to float32 rounding."""
    g = torch.Generator().manual_seed(0)
    R, S, dk = (torch.randn(*shape, generator=g) for shape in ((9, 18), (13, 9), (13, 18)))
    cases = [
        (S, R),
        (S, R[:, :9]),
        (S, R[:, 9:]),
        (dk, R.t()),
        (dk[:, 9:], R[:, 9:].t()),
        (S.t(), dk),
        (S.t(), dk[:, 9:]),
    ]
    for a, b in cases:
        expected = a.double() @ b.double()
        assert expected.abs().max() > 1
        torch.testing.assert_close(onednn.matmul(a, b).double(), expected, rtol=1e-5, atol=1e-5)
    bias = torch.randn(18, generator=g)
    torch.testing.assert_close(
        onednn.matmul(S, R, bias).double(), S.double() @ R.double() + bias.double(), rtol=1e-5, atol=1e-5
    )


def test_onednn_under_bf16_autocast_is_the_reference_path():
    """Under bf16 autocast the projections are autocast's (exactly the reference path's)."""
    steps, ref = onednn.OneDNNSteps(), TorchSteps()
    x, w, b = torch.randn(4, 6), torch.randn(6, 5), torch.randn(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, slow = steps.project(x, w, b), ref.project(x, w, b)
    assert torch.equal(fast, slow)
    assert (fast.double() - (x.double() @ w.double() + b.double())).abs().max() > 1e-4  # bf16 products
    np.testing.assert_allclose(
        steps.project(x, w, b).numpy(), (x.double() @ w.double() + b.double()).numpy(), rtol=1e-5, atol=1e-5
    )


def test_auto_picks_onednn_for_large_float32_models_on_cpu_only():
    assert resolve_impl("auto", "cpu", torch.float32, hidden_size=830) == "onednn"
    assert resolve_impl("auto", "cpu", torch.float32, hidden_size=onednn.MIN_HIDDEN_SIZE) == "onednn"
    assert resolve_impl("auto", "cpu", torch.float32, hidden_size=onednn.MIN_HIDDEN_SIZE - 1) == "reference"
    assert resolve_impl("auto", "cpu", torch.float64, hidden_size=830) == "reference"  # no float64 GEMM
    assert resolve_impl("onednn", "cpu", torch.float32, hidden_size=8) == "onednn"  # asked for: any size
    assert resolve_impl("onednn", "cpu", torch.float32) == "onednn"
    with pytest.raises(RHNError, match=r"rhn_impl=onednn runs float32 models on CPU \(this is float64 on cpu"):
        resolve_impl("onednn", "cpu", torch.float64)
    with pytest.raises(RHNError, match=r"rhn_impl=onednn runs float32 models on CPU \(this is float32 on cuda"):
        resolve_impl("onednn", "cuda", torch.float32)


def test_the_rhn_module_with_onednn_steps_equals_its_default_path():
    """README's opt-in for a module of one's own: outputs, state and every gradient."""
    from rhn_core.backends.torch_rhn import RHN

    torch.manual_seed(0)
    rhn = RHN(input_size=6, hidden_size=9, depth=3, num_layers=2, init_scale=0.3)
    x, masks = torch.randn(4, 5, 6), [torch.bernoulli(torch.full((4, n), 0.7)) / 0.7 for n in (6, 9)]
    results = []
    for steps in (TorchSteps(), onednn.OneDNNSteps()):
        rhn.steps = steps
        out, state = rhn(x, input_masks=masks, state_masks=[m[:, :9] for m in (masks[1], masks[1])])
        grads = torch.autograd.grad((out**2).sum() + state.sum(), list(rhn.parameters()))
        results.append([out, state, *grads])
    for ref, fast in zip(*results):
        assert ref.abs().max() > 1e-3
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_the_products_benchmark_runs_and_prints_its_table():
    """benchmarks/cpu_products.py at a tiny size, so that it cannot rot."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "cpu_products.py")
    out = subprocess.run(
        [sys.executable, script, "--config", "tiny", "--repeat", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("micro-step", "all"))]
    assert [r[0] for r in rows] == ["micro-step", "micro-step", "all"] and all(r[-1].endswith("x") for r in rows)
