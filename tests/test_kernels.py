"""The torch backend's fast paths: fused Triton kernels (on CPU in Triton's interpreter, which
conftest switches on where there is no GPU; on CUDA natively) and static-buffer / CUDA-graph
steps, against the float64 oracle and the eager step (checks in kernel_checks.py)."""

import os

import pytest

torch = pytest.importorskip("torch")

import kernel_checks as checks  # noqa: E402
from rhn_core.errors import RHNError  # noqa: E402

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_devices():
    """cpu under Triton's interpreter, cuda natively; a device is skipped where it cannot run."""
    return [
        pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="Triton interpreter off (GPU here)")),
        pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device")]),
    ]


@pytest.fixture(autouse=True)
def needs_triton():
    pytest.importorskip("triton")


@pytest.mark.parametrize("device", triton_devices())
@pytest.mark.parametrize("case", sorted(checks.CASES))
def test_fused_kernels_forward_against_the_oracle(device, case):
    checks.check_forward(case, device)


@pytest.mark.parametrize("device", triton_devices())
@pytest.mark.parametrize("case", sorted(checks.CASES))
def test_fused_kernels_gradients_against_the_oracle(device, case):
    checks.check_gradients(case, device)


@pytest.mark.parametrize("device", triton_devices())
def test_fused_kernels_train_step_against_the_oracle(device):
    checks.check_train_step("separate_masks", device)


@pytest.mark.parametrize("device", triton_devices())
def test_fused_kernels_in_float32(device):
    checks.check_gradients("shared_masks", device, dtype="float32")
    checks.check_train_step("multi_tile", device, dtype="float32")


def test_static_buffer_steps_give_the_eager_numbers_exactly():
    # the static-buffer step does not depend on the micro-step implementation: reference is enough here
    checks.check_static_steps_match_eager("cpu", impl="reference")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_cuda_graph_steps_give_the_eager_numbers_exactly(impl):
    checks.check_static_steps_match_eager("cuda", impl=impl, step_mode="graph")


def test_impl_choice_and_its_errors(monkeypatch):
    from rhn_core.backends.torch_kernels import resolve_impl

    assert resolve_impl("auto", "cpu", torch.float64) == "reference"
    assert resolve_impl("auto", "cuda") == "triton"  # triton is installed here
    assert resolve_impl("reference", "cuda") == "reference"
    with pytest.raises(RHNError, match="use one of auto, reference, onednn, triton"):
        resolve_impl("cudnn", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RHNError, match="rhn_impl=triton runs on CUDA .*use rhn_impl=auto"):
        resolve_impl("triton", "cpu")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert resolve_impl("auto", "cuda") == "reference"
    with pytest.raises(RHNError, match=r"needs the triton package \(pip install triton\)"):
        resolve_impl("triton", "cuda")
