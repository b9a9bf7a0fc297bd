"""Triton kernels for one RHN micro-step: forward and backward, each one launch.

Forward (micro-layer k, state s, recurrent mask m, fused weights R_k = [R_H | R_T]):

    h = tanh(s*m_H @ R_H + bias_H),  t = sigmoid(s*m_T @ R_T + bias_T),  s' = s + t (h - s)

One program computes a BLOCK_B x BLOCK_H tile of h, t and s' for the same columns,
so the highway update needs no second pass. ``bias`` is px[:, t] (B x 2H, the hoisted
input projection) at micro-layer 0 and b[k] (2H, row stride 0) above it.

Backward (given ds = dJ/ds', plus d_out at the top micro-layer of a time step):

    d_pre = ds * [t (1 - h^2) | (h - s) t (1 - t)]
    ds_in = (d_pre_H @ R_H^T) * m_H + (d_pre_T @ R_T^T) * m_T + ds (1 - t)

Each program owns a column block c of ds_in and loops over the reduction blocks j,
recomputing d_pre[:, j] from (ds, h, t, s) on the fly (a few flops per element,
cheaper than a second launch); it stores d_pre of its own columns for the weight
gradients, which stay large GEMMs in the recurrence's backward.

Masks: MASK = 0 none, 1 one B x H mask for H and T, 2 separate masks (B x 2H,
[for H | for T]). Every load is masked, so sizes that do not fill a tile work.
Under TRITON_INTERPRET=1 these kernels run on CPU tensors (float64 included): the
tests check them against the NumPy oracle that way.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # tanh through sigmoid: tl.sigmoid exists on every target (and the interpreter) in any dtype.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _forward_kernel(
    s_ptr,
    m_ptr,
    r_ptr,
    bias_ptr,
    a_ptr,
    out_ptr,
    B,
    H,
    stride_s,
    stride_m,
    stride_bias,
    stride_a,
    stride_out,
    MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    in_b, in_h = rb < B, rh < H
    acc_h = tl.zeros((BLOCK_B, BLOCK_H), dtype=s_ptr.dtype.element_ty)
    acc_t = tl.zeros((BLOCK_B, BLOCK_H), dtype=s_ptr.dtype.element_ty)
    for k0 in range(0, H, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        in_k = rk < H
        tile = in_b[:, None] & in_k[None, :]
        a_h = tl.load(s_ptr + rb[:, None] * stride_s + rk[None, :], mask=tile, other=0.0)
        a_t = a_h
        if MASK == 1:
            a_h = a_h * tl.load(m_ptr + rb[:, None] * stride_m + rk[None, :], mask=tile, other=0.0)
            a_t = a_h
        if MASK == 2:
            a_t = a_h * tl.load(m_ptr + rb[:, None] * stride_m + H + rk[None, :], mask=tile, other=0.0)
            a_h = a_h * tl.load(m_ptr + rb[:, None] * stride_m + rk[None, :], mask=tile, other=0.0)
        w = in_k[:, None] & in_h[None, :]
        r_h = tl.load(r_ptr + rk[:, None] * (2 * H) + rh[None, :], mask=w, other=0.0)
        r_t = tl.load(r_ptr + rk[:, None] * (2 * H) + H + rh[None, :], mask=w, other=0.0)
        acc_h += tl.dot(a_h, r_h, input_precision=PRECISION)
        acc_t += tl.dot(a_t, r_t, input_precision=PRECISION)
    tile = in_b[:, None] & in_h[None, :]
    bias = bias_ptr + rb[:, None] * stride_bias + rh[None, :]
    h = _tanh(acc_h + tl.load(bias, mask=tile, other=0.0))
    t = tl.sigmoid(acc_t + tl.load(bias + H, mask=tile, other=0.0))
    s = tl.load(s_ptr + rb[:, None] * stride_s + rh[None, :], mask=tile, other=0.0)
    a = a_ptr + rb[:, None] * stride_a + rh[None, :]
    tl.store(a, h, mask=tile)
    tl.store(a + H, t, mask=tile)
    tl.store(out_ptr + rb[:, None] * stride_out + rh[None, :], s + t * (h - s), mask=tile)


@triton.jit
def _d_pre(
    ds_ptr, dout_ptr, a_ptr, s_ptr, rb, rj, tile, H, stride_ds, stride_dout, stride_a, stride_s, HAS_DOUT: tl.constexpr
):
    """(ds, d_pre_H, d_pre_T, t) on the tile rows rb x columns rj."""
    ds = tl.load(ds_ptr + rb[:, None] * stride_ds + rj[None, :], mask=tile, other=0.0)
    if HAS_DOUT:
        ds += tl.load(dout_ptr + rb[:, None] * stride_dout + rj[None, :], mask=tile, other=0.0)
    a = a_ptr + rb[:, None] * stride_a + rj[None, :]
    h = tl.load(a, mask=tile, other=0.0)
    t = tl.load(a + H, mask=tile, other=0.0)
    s = tl.load(s_ptr + rb[:, None] * stride_s + rj[None, :], mask=tile, other=0.0)
    dt = ds * t
    return ds, dt * (1.0 - h * h), dt * (h - s) * (1.0 - t), t


@triton.jit
def _backward_kernel(
    ds_ptr,
    dout_ptr,
    a_ptr,
    s_ptr,
    m_ptr,
    r_ptr,
    dpre_ptr,
    dsin_ptr,
    B,
    H,
    stride_ds,
    stride_dout,
    stride_a,
    stride_s,
    stride_m,
    stride_dpre,
    stride_dsin,
    HAS_DOUT: tl.constexpr,
    MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rc = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    in_b, in_c = rb < B, rc < H
    acc_h = tl.zeros((BLOCK_B, BLOCK_H), dtype=ds_ptr.dtype.element_ty)
    acc_t = tl.zeros((BLOCK_B, BLOCK_H), dtype=ds_ptr.dtype.element_ty)
    for j0 in range(0, H, BLOCK_K):
        rj = j0 + tl.arange(0, BLOCK_K)
        in_j = rj < H
        _, dh, dt, _ = _d_pre(
            ds_ptr,
            dout_ptr,
            a_ptr,
            s_ptr,
            rb,
            rj,
            in_b[:, None] & in_j[None, :],
            H,
            stride_ds,
            stride_dout,
            stride_a,
            stride_s,
            HAS_DOUT,
        )
        # R^T tiles: element [j, c] of R_H^T is R[c, j]
        w = in_j[:, None] & in_c[None, :]
        rt_h = tl.load(r_ptr + rc[None, :] * (2 * H) + rj[:, None], mask=w, other=0.0)
        rt_t = tl.load(r_ptr + rc[None, :] * (2 * H) + H + rj[:, None], mask=w, other=0.0)
        acc_h += tl.dot(dh, rt_h, input_precision=PRECISION)
        acc_t += tl.dot(dt, rt_t, input_precision=PRECISION)
    tile = in_b[:, None] & in_c[None, :]
    ds, dh, dt, t = _d_pre(
        ds_ptr, dout_ptr, a_ptr, s_ptr, rb, rc, tile, H, stride_ds, stride_dout, stride_a, stride_s, HAS_DOUT
    )
    if MASK == 0:
        ds_in = acc_h + acc_t
    if MASK == 1:
        ds_in = (acc_h + acc_t) * tl.load(m_ptr + rb[:, None] * stride_m + rc[None, :], mask=tile, other=0.0)
    if MASK == 2:
        m = m_ptr + rb[:, None] * stride_m + rc[None, :]
        ds_in = acc_h * tl.load(m, mask=tile, other=0.0) + acc_t * tl.load(m + H, mask=tile, other=0.0)
    tl.store(dsin_ptr + rb[:, None] * stride_dsin + rc[None, :], ds_in + ds * (1.0 - t), mask=tile)
    d = dpre_ptr + rb[:, None] * stride_dpre + rc[None, :]
    tl.store(d, dh, mask=tile)
    tl.store(d + H, dt, mask=tile)


# Tile sizes. tl.dot needs every dimension >= 16; a batch tile covers small batches in one
# program row, and narrow column tiles give H / BLOCK_H programs to spread over the SMs.
BLOCK_H, BLOCK_K = 32, 32


def _block_b(B):
    return min(64, max(16, triton.next_power_of_2(B)))


def _mask_mode(mh, H):
    if mh is None:
        return 0
    return 2 if mh.shape[-1] == 2 * H else 1


def _precision(dtype, tf32):
    return "tf32" if tf32 and dtype == torch.float32 else "ieee"


def forward_step(s, mh, R_k, bias, a_out, s_out, tf32=False):
    """a_out = [h | t], s_out = s + t (h - s) for one micro-step (all B x ..., row-major rows).

    ``bias``: B x 2H (rows may be strided, e.g. px[:, t]) or a 2H vector.
    """
    B, H = s.shape
    stride_bias = bias.stride(0) if bias.dim() == 2 else 0
    block_b = _block_b(B)
    grid = (triton.cdiv(B, block_b), triton.cdiv(H, BLOCK_H))
    _forward_kernel[grid](
        s,
        s if mh is None else mh,
        R_k,
        bias,
        a_out,
        s_out,
        B,
        H,
        s.stride(0),
        0 if mh is None else mh.stride(0),
        stride_bias,
        a_out.stride(0),
        s_out.stride(0),
        MASK=_mask_mode(mh, H),
        PRECISION=_precision(s.dtype, tf32),
        BLOCK_B=block_b,
        BLOCK_H=BLOCK_H,
        BLOCK_K=BLOCK_K,
    )


def backward_step(ds, d_out, a, s, mh, R_k, d_pre_out, ds_out, tf32=False):
    """d_pre_out (B x 2H) and ds_out = dJ/ds (B x H) of one micro-step; ``d_out`` (B x H or None)
    is added to ``ds`` first (the output gradient at the top micro-layer of a time step)."""
    B, H = ds.shape
    block_b = _block_b(B)
    grid = (triton.cdiv(B, block_b), triton.cdiv(H, BLOCK_H))
    _backward_kernel[grid](
        ds,
        ds if d_out is None else d_out,
        a,
        s,
        ds if mh is None else mh,
        R_k,
        d_pre_out,
        ds_out,
        B,
        H,
        ds.stride(0),
        0 if d_out is None else d_out.stride(0),
        a.stride(0),
        s.stride(0),
        0 if mh is None else mh.stride(0),
        d_pre_out.stride(0),
        ds_out.stride(0),
        HAS_DOUT=d_out is not None,
        MASK=_mask_mode(mh, H),
        PRECISION=_precision(ds.dtype, tf32),
        BLOCK_B=block_b,
        BLOCK_H=BLOCK_H,
        BLOCK_K=BLOCK_K,
    )
