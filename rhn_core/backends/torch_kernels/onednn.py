"""The torch backend's CPU fast path: every product of a float32 step through oneDNN.

PyTorch sends a float32 ``torch.mm`` / ``addmm`` on CPU to MKL's sgemm. oneDNN (which
PyTorch ships and uses for its own CPU inference passes) runs the same products faster
on the AMD EPYC machines this project is developed on, most of all the recurrence's
small ones (B x H by H x 2H, B = 20): measured with 2 threads (``benchmarks/cpu_products.py``),
the 350 micro-step products of a ptb_sota step 618 -> 368 ms forward and 547 -> 362 ms
backward, all its products 1.35x; with one thread only 1.05x (the forward and the weight
gradients faster, the backward and the softmax a little slower).
oneDNN reads the weights as they are (transposed and sliced views included), so
nothing is packed or copied when SGD changes them.

``OneDNNSteps`` is ``TorchSteps`` with its products (``affine``, ``product``,
``project``) replaced and its forward micro-step in fewer operations; the hand-written
backward loop and the weight gradients are the same code. The products are float32 only
(oneDNN has no float64 GEMM); ``usable`` says where.
"""
import torch

from .eager import TorchSteps

# oneDNN pays more per call than MKL, which small products feel: measured per training step
# (2 threads, ``benchmarks/throughput.py``), the demo (H 128) 55 -> 72 ms, H 200 equal
# (172 ms), ptb_sota (H 830) 2234 -> 1883 ms. ``rhn_impl=auto`` takes oneDNN from this H.
MIN_HIDDEN_SIZE = 512


def _linear():
    """oneDNN's linear op (x @ W^T + b, W as out x in), or None in a build without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def usable(device_type, dtype):
    """True where this path runs: float32 on a CPU, in a PyTorch built with oneDNN."""
    return device_type == "cpu" and dtype == torch.float32 and _linear() is not None


def matmul(a, b, bias=None):
    """a @ b (+ bias, a vector) through oneDNN; a and b 2-D float32 CPU tensors, any strides."""
    # oneDNN's weight is out x in: b.t() is a view, never a copy
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), bias, "none", [], "")


def affine(x, w, bias, out=None):
    """x @ w + bias, bias a vector (added inside the product) or one row per row of x
    (micro-layer 0: the input projection of this time step); into ``out`` if given."""
    if bias.dim() == 1:
        y = matmul(x, w, bias)
        return y if out is None else out.copy_(y)
    return torch.add(matmul(x, w), bias, out=out)


class Projection(torch.autograd.Function):
    """x @ w + b for x N x in (the input projection and the softmax), all three
    products of its gradient through oneDNN too."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return matmul(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = matmul(dy, w.t()) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:  # in w's own layout: the tied softmax's w is the embedding transposed,
            # and its gradient is added to the embedding's (a strided add otherwise)
            dw = matmul(dy.t(), x).t() if w.stride(0) == 1 and w.stride(1) != 1 else matmul(x.t(), dy)
        db = dy.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dw, db


class OneDNNSteps(TorchSteps):
    """``TorchSteps`` whose products run in oneDNN (float32 on CPU)."""

    def affine(self, x, w, bias, out):
        affine(x, w, bias, out)

    def product(self, a, b, out=None):
        return matmul(a, b) if out is None else out.copy_(matmul(a, b))

    def forward_step(self, s, mh, R_k, bias, a, s_out):
        H = s.shape[-1]
        if mh is not None and mh.shape[-1] == 2 * H:  # separate masks: the reference's two products
            return super().forward_step(s, mh, R_k, bias, a, s_out)
        # the activations read the product's own output (no copy into a first), and lerp is
        # s + t (h - s) in one operation: five operations per micro-step instead of seven
        pre = affine(s if mh is None else s * mh, R_k, bias)
        h, g = a[:, :H], a[:, H:]
        torch.tanh(pre[:, :H], out=h)
        torch.sigmoid(pre[:, H:], out=g)
        torch.lerp(s, h, g, out=s_out)

    def project(self, x, w, b):
        if torch.is_autocast_enabled(x.device.type):  # bf16 autocast decides the products' type
            return super().project(x, w, b)
        return Projection.apply(x.reshape(-1, x.shape[-1]), w, b).view(*x.shape[:-1], w.shape[-1])
