"""Fast paths of the PyTorch backend: oneDNN products on CPU, fused Triton micro-step
kernels and the static-buffer / CUDA-graph step.

``rhn_impl`` picks how the recurrence's micro-steps and the model's products run:

    reference  PyTorch operations (``eager.TorchSteps``), any device and dtype
    onednn     the same operations with every product in oneDNN (``OneDNNSteps``): float32 on CPU
    triton     one Triton kernel per micro-step forward and one per backward (``TritonSteps``);
               needs CUDA, or ``TRITON_INTERPRET=1`` (set before triton is imported) on CPU
    auto       triton on CUDA when triton imports; onednn for float32 on CPU from H = 512; else reference

With ``precision=bf16`` on CPU the path is ``onednn.BF16Steps`` (any H; rhn_impl auto or onednn):
every product with bfloat16 inputs, on CPUs with bfloat16 instructions (``cpu_bf16``).

Triton is optional: it is imported only when the triton path is chosen.
"""

import importlib.util
import os

import torch

from ...errors import RHNError
from ..cpu_bf16 import require_bf16_products
from . import onednn

IMPLS = ("auto", "reference", "onednn", "triton")


def triton_installed():
    return importlib.util.find_spec("triton") is not None


def interpreting():
    """True when Triton runs kernels on CPU tensors (its interpreter, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl, device_type, dtype=torch.float32, hidden_size=None, precision="float32"):
    """'reference', 'onednn' or 'triton' for the config value ``impl`` on a device of
    ``device_type``, for a model of ``dtype`` and ``hidden_size`` (None: large) and ``precision``."""
    if impl not in IMPLS:
        raise RHNError(f"rhn_impl={impl!r}: use one of {', '.join(IMPLS)}")
    if precision == "bf16" and device_type == "cpu" and impl != "triton":  # triton: its interpreter, for tests
        if impl == "reference":
            raise RHNError(
                "precision=bf16 on CPU runs every product in oneDNN: use rhn_impl=auto or onednn "
                "(or precision=float32 with rhn_impl=reference)"
            )
        require_bf16_products("torch")
        if not onednn.usable(device_type, dtype):
            raise RHNError("precision=bf16 on CPU needs a PyTorch built with oneDNN: use precision=float32")
        return "onednn"
    if impl == "auto":
        if device_type == "cuda" and triton_installed():
            return "triton"
        large = hidden_size is None or hidden_size >= onednn.MIN_HIDDEN_SIZE
        return "onednn" if large and onednn.usable(device_type, dtype) else "reference"
    if impl == "onednn" and not onednn.usable(device_type, dtype):
        raise RHNError(
            f"rhn_impl=onednn runs float32 models on CPU (this is {str(dtype).replace('torch.', '')} "
            f"on {device_type}, or PyTorch lacks oneDNN); use rhn_impl=auto"
        )
    if impl == "triton":
        if not triton_installed():
            raise RHNError("rhn_impl=triton needs the triton package (pip install triton); or use rhn_impl=auto")
        if device_type != "cuda" and not interpreting():
            raise RHNError(
                f"rhn_impl=triton runs on CUDA (on {device_type} only under TRITON_INTERPRET=1, "
                "for tests); use rhn_impl=auto or device=cuda"
            )
    return impl


def make_steps(impl, precision="float32"):
    """The micro-step implementation for a resolved ``impl`` and ``precision``."""
    if impl == "reference":
        from .eager import TorchSteps

        return TorchSteps()
    if impl == "onednn":
        return onednn.BF16Steps() if precision == "bf16" else onednn.OneDNNSteps()
    from .fused import TritonSteps

    return TritonSteps(tf32=precision == "tf32")
