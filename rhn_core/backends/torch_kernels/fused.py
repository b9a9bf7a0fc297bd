"""The recurrence's micro-steps through the fused Triton kernels (``triton_steps``).

Same two methods as ``reference.TorchSteps``, so ``RHNRecurrence`` runs its loops and
its weight-gradient GEMMs unchanged: only the per-micro-step work is one launch here.
"""

import torch

from .eager import TorchSteps
from . import triton_steps


class TritonSteps(TorchSteps):
    """One kernel per micro-step forward and one per micro-step backward (the weight
    gradients and projections stay ``TorchSteps``' products: large cuBLAS GEMMs)."""

    def __init__(self, tf32=False):
        self.tf32 = tf32  # products in TF32 (float32 models on CUDA only)

    def forward_step(self, s, mh, R_k, bias, a, s_out):
        # s, a, s_out are rows of the recurrence's own buffers and R_k of a parameter: contiguous;
        # bias is px[:, t] (strided rows, unit column stride) or b[k]
        triton_steps.forward_step(s, mh, R_k, bias, a, s_out, tf32=self.tf32)

    def backward_state(self, mh, R, S, A, d_out, d_final, d_pre):
        D, T = R.shape[0], d_out.shape[1]
        Rs, Ss, As, Ds = R.unbind(0), S.unbind(0), A.unbind(0), d_pre.unbind(0)
        d_out = d_out.contiguous()  # autograd may hand in an expanded (stride 0) gradient
        mh = None if mh is None else mh.contiguous()
        # two ping-pong buffers carry dJ/ds down the micro-steps
        ds, spare = d_final.contiguous(), torch.empty_like(d_final)
        for t in reversed(range(T)):
            for k in reversed(range(D)):
                i = t * D + k
                triton_steps.backward_step(
                    ds, d_out[:, t] if k == D - 1 else None, As[i], Ss[i], mh, Rs[k], Ds[i], spare, tf32=self.tf32
                )
                ds, spare = spare, ds
        return ds
