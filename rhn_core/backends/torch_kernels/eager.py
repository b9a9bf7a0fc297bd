"""The eager micro-steps of the torch backend (rhn_impl=reference): the recurrence's per-micro-step work,
its hand-written backward loop and the model's products as plain PyTorch operations
(any device, any dtype). The fast paths (``onednn.OneDNNSteps``, ``fused.TritonSteps``)
subclass it and replace only its products or its micro-steps, so that what they share
is written once.
"""

import torch


class TorchSteps:
    """The micro-steps of ``RHNRecurrence`` and the model's products from PyTorch operations:
    the reference path (any device, any dtype). ``torch_kernels`` has the same methods with
    the products in oneDNN (``OneDNNSteps``, CPU) or each micro-step fused (``TritonSteps``)."""

    def weights(self, R):
        """R (D x H x 2H) as the recurrence's products read it, once per step (a bf16 copy for ``BF16Steps``)."""
        return R

    def affine(self, x, w, bias, out):
        """out = x @ w + bias (a vector, or one row per row of x)."""
        torch.addmm(bias, x, w, out=out)

    def product(self, a, b, out=None):
        return torch.mm(a, b, out=out)

    def project(self, x, w, b):
        """x @ w + b over x's last axis, differentiable (input projection, softmax)."""
        return torch.matmul(x, w) + b

    def forward_step(self, s, mh, R_k, bias, a, s_out):
        """a = [h | t] (B x 2H) and s_out = s + t (h - s) of one micro-step."""
        H = s.shape[-1]
        h, g = a[:, :H], a[:, H:]
        if mh is not None and mh.shape[-1] == 2 * H:  # separate masks: one product for H, one for T
            self.affine(s * mh[:, :H], R_k[:, :H], bias[..., :H], h)
            self.affine(s * mh[:, H:], R_k[:, H:], bias[..., H:], g)
        else:  # H and T of a micro-layer in one product
            self.affine(s if mh is None else s * mh, R_k, bias, a)
        h.tanh_()
        g.sigmoid_()
        torch.addcmul(s, g, h - s, out=s_out)  # s + t (h - s): the carry is undropped

    def backward_state(self, mh, R, S, A, d_out, d_final, d_pre):
        """Fill d_pre (N x B x 2H, dJ/d[pre_h | pre_t] of every micro-step) and return dJ/ds0."""
        N, B, H = S.shape[0] - 1, S.shape[1], S.shape[2]
        D, T = R.shape[0], d_out.shape[1]
        h, g, s_in = A[..., :H], A[..., H:], S[:N]
        # d_pre = ds * P and the carried part ds * (1 - t); P for all micro-steps at once
        # (an in-place version through views of one buffer broke torch.compile's exact equality)
        P = torch.cat([g * (1 - h * h), (h - s_in) * g * (1 - g)], dim=-1)
        carry = 1 - g
        split = mh is not None and mh.shape[-1] == 2 * H
        Rt = [r.t() for r in R.unbind(0)]
        RtH, RtT = [r[:, :H].t() for r in R.unbind(0)], [r[:, H:].t() for r in R.unbind(0)]
        Ps, Cs, Ds = P.view(N, B, 2, H).unbind(0), carry.unbind(0), d_pre.unbind(0)
        Ds3 = d_pre.view(N, B, 2, H).unbind(0)
        ds = d_final
        for t in reversed(range(T)):
            ds = ds + d_out[:, t]
            for k in reversed(range(D)):
                i = t * D + k
                torch.mul(Ps[i], ds.unsqueeze(1), out=Ds3[i])
                if split:
                    ds_in = (
                        self.product(Ds[i][:, :H], RtH[k]) * mh[:, :H] + self.product(Ds[i][:, H:], RtT[k]) * mh[:, H:]
                    )
                else:
                    ds_in = self.product(Ds[i], Rt[k])
                    if mh is not None:
                        ds_in.mul_(mh)
                ds = torch.addcmul(ds_in, ds, Cs[i])
        return ds
