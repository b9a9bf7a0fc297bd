"""Fast paths of the PyTorch backend: fused Triton micro-step kernels and the
static-buffer / CUDA-graph step.

``rhn_impl`` picks how the recurrence's micro-steps run:

    reference  PyTorch operations (``torch_rhn.TorchSteps``), any device and dtype
    triton     one Triton kernel per micro-step forward and one per backward (``TritonSteps``);
               needs CUDA, or ``TRITON_INTERPRET=1`` (set before triton is imported) on CPU
    auto       triton on CUDA when triton imports, else reference

Triton is optional: it is imported only when the triton path is chosen.
"""
import importlib.util
import os

from ...errors import RHNError

IMPLS = ("auto", "reference", "triton")


def triton_installed():
    return importlib.util.find_spec("triton") is not None


def interpreting():
    """True when Triton runs kernels on CPU tensors (its interpreter, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl, device_type):
    """'reference' or 'triton' for the config value ``impl`` on a device of ``device_type``."""
    if impl not in IMPLS:
        raise RHNError(f"rhn_impl={impl!r}: use one of {', '.join(IMPLS)}")
    if impl == "auto":
        return "triton" if device_type == "cuda" and triton_installed() else "reference"
    if impl == "triton":
        if not triton_installed():
            raise RHNError("rhn_impl=triton needs the triton package (pip install triton); or use rhn_impl=auto")
        if device_type != "cuda" and not interpreting():
            raise RHNError(f"rhn_impl=triton runs on CUDA (on {device_type} only under TRITON_INTERPRET=1, "
                           "for tests); use rhn_impl=auto or device=cuda")
    return impl


def make_steps(impl, tf32=False):
    """The micro-step implementation for a resolved ``impl``."""
    if impl == "reference":
        from ..torch_rhn import TorchSteps
        return TorchSteps()
    from .fused import TritonSteps
    return TritonSteps(tf32=tf32)
