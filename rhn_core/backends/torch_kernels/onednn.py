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

``BF16Steps`` (``precision=bf16`` on CPU) is the same path with every product's inputs
cast to bfloat16 (oneDNN accumulates in float32; its result comes back rounded to bfloat16
once and is widened again): the recurrent state, the gates, the loss and every gradient
outside the products stay float32, and the parameters too (cast once per step, not stored).
Its products go through the same oneDNN op as float32's: ``torch.mm`` on bfloat16 tensors
(also oneDNN) measured the same within noise for a ptb_sota step (Intel Xeon with AMX-BF16).
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
    (micro-layer 0: the input projection of this time step); into ``out`` if given.
    A float32 bias with bfloat16 x and w is added after the product, in float32."""
    if bias.dim() == 1 and bias.dtype == x.dtype:
        y = matmul(x, w, bias)
        return y if out is None else out.copy_(y)
    return torch.add(matmul(x, w), bias, out=out)


def same(t):
    """The products' inputs as they are (float32)."""
    return t


def bf16(t):
    """The products' inputs in bfloat16 (a tensor already bfloat16 is not copied)."""
    return t.to(torch.bfloat16)


class Projection(torch.autograd.Function):
    """x @ w + b for x N x in (the input projection and the softmax), all three
    products of its gradient through oneDNN too, with inputs ``cast`` (``same`` or ``bf16``)
    and float32 results."""

    @staticmethod
    def forward(ctx, x, w, b, cast):
        x, w = cast(x), cast(w)
        ctx.save_for_backward(x, w)  # bf16: the cast copies are what the gradient's products read
        ctx.cast = cast
        return affine(x, w, b).to(b.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        cdy = ctx.cast(dy)
        dx = matmul(cdy, w.t()).to(dy.dtype) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:  # in w's own layout: the tied softmax's w is the embedding transposed,
            # and its gradient is added to the embedding's (a strided add otherwise)
            dw = matmul(cdy.t(), x).t() if w.stride(0) == 1 and w.stride(1) != 1 else matmul(x.t(), cdy)
            dw = dw.to(dy.dtype)
        db = dy.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


class OneDNNSteps(TorchSteps):
    """``TorchSteps`` whose products run in oneDNN (float32 on CPU)."""

    cast = staticmethod(same)  # what the products' inputs are cast to

    def weights(self, R):
        return self.cast(R)

    def affine(self, x, w, bias, out):
        affine(self.cast(x), self.cast(w), bias, out)

    def product(self, a, b, out=None):
        y = matmul(self.cast(a), self.cast(b))
        return y.float() if out is None else out.copy_(y)

    def forward_step(self, s, mh, R_k, bias, a, s_out):
        H = s.shape[-1]
        if mh is not None and mh.shape[-1] == 2 * H:  # separate masks: the reference's two products
            return super().forward_step(s, mh, R_k, bias, a, s_out)
        # the activations read the product's own output (no copy into a first), and lerp is
        # s + t (h - s) in one operation: five operations per micro-step instead of seven
        pre = affine(self.cast(s if mh is None else s * mh), self.cast(R_k), bias)
        h, g = a[:, :H], a[:, H:]
        torch.tanh(pre[:, :H], out=h)
        torch.sigmoid(pre[:, H:], out=g)
        torch.lerp(s, h, g, out=s_out)

    def project(self, x, w, b):
        if torch.is_autocast_enabled(x.device.type):  # bf16 autocast decides the products' type
            return super().project(x, w, b)
        return Projection.apply(x.reshape(-1, x.shape[-1]), w, b, self.cast).view(*x.shape[:-1], w.shape[-1])


class BF16Steps(OneDNNSteps):
    """``OneDNNSteps`` with bfloat16 inputs to every product (``precision=bf16`` on CPU);
    everything else float32."""

    cast = staticmethod(bf16)
