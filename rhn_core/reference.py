"""Float64 NumPy reference of the RHN language model: the oracle for every backend.

Written straight from the equations of docs/faithfulness.md (the cell, loss, weight decay), in the
original's form (one matrix over the concatenation [x * m_i, s * m_h] at
micro-layer 0), deliberately unlike the backends' hoisted, fused form:

    micro-layer k:  a = [x * m_i, s * m_h] (k = 0)  or  s * m_h (k > 0)
                    h = tanh(a M_H,k + b_H,k),  t = sigmoid(a M_T,k + b_T,k)
                    (with tied_noise=False, H and T each have their own m_i, m_h)
                    s = s + t * (h - s)
    loss C = sum_t mean_b NLL,   objective J = C + weight_decay/2 * sum(theta^2)

The backward pass is written out by hand too (checked against finite
differences in the tests), so gradients have an oracle as well.
"""

import numpy as np

from .masks import NO_MASKS
from .params import layer_names


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _mask(masks, field, layer=None):
    value = getattr(masks, field)
    if value is None:
        return 1.0
    return value if layer is None else value[layer]


def _gate_masks(masks, field, layer, width):
    """(mask for H, mask for T): the same array when H and T share masks (tied_noise),
    the two halves of a B x 2*width array when they do not."""
    m = _mask(masks, field, layer)
    if np.ndim(m) and m.shape[1] == 2 * width:
        return m[:, :width], m[:, width:]
    return m, m


def forward(params, spec, x, state, masks=NO_MASKS):
    """Log-probabilities (B x T x V), final state (list of L arrays B x H), and a cache.

    ``x``: B x T int ids; ``state``: list of L arrays B x H (zeros at a stream start).
    """
    B, T = x.shape
    mx = _mask(masks, "x")
    inp = params["embedding"][x] * (mx[..., None] if np.ndim(mx) else mx)
    cache = {"x": x, "layers": [], "inputs": []}
    final = []
    for l in range(spec.num_layers):
        n_in, H = inp.shape[-1], spec.hidden_size
        (mi_h, mi_t), (mh_h, mh_t) = _gate_masks(masks, "i", l, n_in), _gate_masks(masks, "h", l, H)
        s = np.array(state[l], dtype=np.float64)
        steps, outputs = [], []
        for t in range(T):
            micro = []
            for k in range(spec.depth):
                hm, hb, tm, tb = (params[n] for n in layer_names(l, k))
                if k == 0:
                    a_h = np.concatenate([inp[:, t] * mi_h, s * mh_h], axis=1)
                    a_t = np.concatenate([inp[:, t] * mi_t, s * mh_t], axis=1)
                else:
                    a_h, a_t = s * mh_h, s * mh_t
                h = np.tanh(a_h @ hm + hb)
                g = _sigmoid(a_t @ tm + tb)
                micro.append((a_h, a_t, s, h, g))
                s = s + g * (h - s)
            steps.append(micro)
            outputs.append(s)
        cache["inputs"].append(inp)
        cache["layers"].append(steps)
        inp = np.stack(outputs, axis=1)
        final.append(s)
    mo = _mask(masks, "o")
    o = inp * (mo[:, None, :] if np.ndim(mo) else mo)
    w = params["embedding"].T if spec.tied else params["softmax_w"]
    logits = o @ w + params["softmax_b"]
    logits = logits - logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    cache.update(o=o, log_probs=log_probs, masks=masks)
    return log_probs, final, cache


def loss(log_probs, y):
    """C = sum over time of the batch-mean negative log-likelihood (nats)."""
    B = y.shape[0]
    return -np.take_along_axis(log_probs, y[..., None], axis=-1).sum() / B


def objective(params, spec, x, y, state, masks=NO_MASKS, weight_decay=0.0):
    """(J, C, final state): J = C + weight_decay/2 * sum of all squared parameters."""
    log_probs, final, _ = forward(params, spec, x, state, masks)
    c = loss(log_probs, y)
    l2 = 0.5 * weight_decay * sum(float((p**2).sum()) for p in params.values())
    return c + l2, c, final


def gradients(params, spec, x, y, state, masks=NO_MASKS, weight_decay=0.0):
    """dJ/dtheta for every parameter (the incoming state is a constant, as in BPTT)."""
    return objective_and_gradients(params, spec, x, y, state, masks, weight_decay)[2]


def objective_and_gradients(params, spec, x, y, state, masks=NO_MASKS, weight_decay=0.0):
    """(J, final state, dJ/dtheta) from one forward pass: what a training step needs."""
    log_probs, final, cache = forward(params, spec, x, state, masks)
    l2 = 0.5 * weight_decay * sum(float((p**2).sum()) for p in params.values())
    B, T = y.shape
    grads = {n: weight_decay * p for n, p in params.items()}
    dlogits = np.exp(log_probs)
    np.put_along_axis(dlogits, y[..., None], np.take_along_axis(dlogits, y[..., None], -1) - 1, -1)
    dlogits /= B
    o = cache["o"]
    if spec.tied:
        grads["embedding"] += (o.reshape(-1, o.shape[-1]).T @ dlogits.reshape(-1, dlogits.shape[-1])).T
        w = params["embedding"].T
    else:
        grads["softmax_w"] += o.reshape(-1, o.shape[-1]).T @ dlogits.reshape(-1, dlogits.shape[-1])
        w = params["softmax_w"]
    grads["softmax_b"] += dlogits.sum(axis=(0, 1))
    mo = _mask(masks, "o")
    dout = (dlogits @ w.T) * (mo[:, None, :] if np.ndim(mo) else mo)
    for l in reversed(range(spec.num_layers)):
        n_in = cache["inputs"][l].shape[-1]
        (mi_h, mi_t), (mh_h, mh_t) = _gate_masks(masks, "i", l, n_in), _gate_masks(masks, "h", l, spec.hidden_size)
        dinp = np.zeros_like(cache["inputs"][l])
        ds = np.zeros_like(dout[:, 0])
        for t in reversed(range(T)):
            ds = ds + dout[:, t]
            for k in reversed(range(spec.depth)):
                a_h, a_t, s, h, g = cache["layers"][l][t][k]
                hm, hb, tm, tb = layer_names(l, k)
                dzh = ds * g * (1 - h**2)
                dzt = ds * (h - s) * g * (1 - g)
                grads[hm] += a_h.T @ dzh
                grads[hb] += dzh.sum(axis=0)
                grads[tm] += a_t.T @ dzt
                grads[tb] += dzt.sum(axis=0)
                da_h, da_t = dzh @ params[hm].T, dzt @ params[tm].T
                ds = ds * (1 - g)
                if k == 0:
                    dinp[:, t] = da_h[:, :n_in] * mi_h + da_t[:, :n_in] * mi_t
                    ds = ds + da_h[:, n_in:] * mh_h + da_t[:, n_in:] * mh_t
                else:
                    ds = ds + da_h * mh_h + da_t * mh_t
        dout = dinp
    mx = _mask(masks, "x")
    demb = dout * (mx[..., None] if np.ndim(mx) else mx)
    np.add.at(grads["embedding"], cache["x"].reshape(-1), demb.reshape(-1, demb.shape[-1]))
    return loss(log_probs, y) + l2, final, grads


def clipped_sgd_step(params, grads, lr, max_grad_norm):
    """theta - lr * g * max_grad_norm / max(||g||, max_grad_norm) (global norm, as TF)."""
    norm = np.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    scale = max_grad_norm / max(norm, max_grad_norm)
    return {n: p - lr * scale * grads[n] for n, p in params.items()}
