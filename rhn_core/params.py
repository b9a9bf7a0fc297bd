"""The canonical parameters: names, shapes, the original initialisation, checks.

One framework-neutral dict of NumPy arrays, named as the original TensorFlow
variables without their ``model/`` prefix (docs/faithfulness.md, Parameter names):

    embedding            V x in_size
    RHN<l>/h_0/Matrix    (in_l + H) x H     micro-layer 0 sees [x * m_i, s * m_h]
    RHN<l>/h_<k>/Matrix  H x H              k = 1 .. D-1 see only s * m_h
    RHN<l>/h_<k>/Bias    H                  (and the same for the T gate, t_<k>)
    softmax_w            H x V              absent when tied (embedding^T is used)
    softmax_b            V

Backends load and export exactly this dict; checkpoints store it.
"""

from dataclasses import dataclass

import numpy as np

from .errors import RHNError


@dataclass(frozen=True)
class ModelSpec:
    """Shape-defining hyperparameters of an RHN language model."""

    vocab_size: int
    hidden_size: int
    depth: int
    num_layers: int = 1
    tied: bool = True
    init_scale: float = 0.04
    init_bias: float = -2.0
    init_other_bias: object = "uniform"  # H and softmax biases: 'uniform' (TF) or a constant (Theano)

    @property
    def in_size(self):
        """Embedding width: V when V < H and untied (the V x V char embedding), else H."""
        if self.vocab_size < self.hidden_size and not self.tied:
            return self.vocab_size
        return self.hidden_size

    @property
    def layer_input_sizes(self):
        """Input width of each layer: in_size for layer 0, H above it.

        The original gave every layer masks of width in_size and so could not
        stack layers under the V x V rule; using H above layer 0 makes it work and
        changes nothing where the original worked.
        """
        return (self.in_size,) + (self.hidden_size,) * (self.num_layers - 1)


def spec_from_config(cfg, vocab_size=None):
    """ModelSpec of a config; ``vocab_size`` overrides the config's (data-derived V)."""
    return ModelSpec(
        vocab_size=vocab_size or cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        depth=cfg["depth"],
        num_layers=cfg["num_layers"],
        tied=bool(cfg["tied"]),
        init_scale=cfg["init_scale"],
        init_bias=cfg["init_bias"],
        init_other_bias=cfg.get("init_other_bias", "uniform"),
    )


def layer_names(l, k):
    """Names of (H matrix, H bias, T matrix, T bias) of micro-layer k of layer l."""
    return tuple(f"RHN{l}/{g}_{k}/{p}" for g in "ht" for p in ("Matrix", "Bias"))


def param_shapes(spec):
    """Ordered dict name -> shape; the order is also the initialisation order."""
    H, V = spec.hidden_size, spec.vocab_size
    shapes = {"embedding": (V, spec.in_size)}
    for l, n_in in enumerate(spec.layer_input_sizes):
        for k in range(spec.depth):
            rows = n_in + H if k == 0 else H
            hm, hb, tm, tb = layer_names(l, k)
            shapes.update({hm: (rows, H), hb: (H,), tm: (rows, H), tb: (H,)})
    if not spec.tied:
        shapes["softmax_w"] = (H, V)
    shapes["softmax_b"] = (V,)
    return shapes


def count_params(spec):
    """Number of trainable scalars (the original's count: docs/faithfulness.md, Reference numbers)."""
    return int(sum(np.prod(s) for s in param_shapes(spec).values()))


def is_t_bias(name):
    return "/t_" in name and name.endswith("/Bias")


def init_params(spec, rng):
    """Original initialisation: U(-init_scale, init_scale), T biases = init_bias; the
    other biases (H, softmax) uniform too, or the constant ``init_other_bias``.

    ``rng`` is a ``numpy.random.Generator``; float64 arrays, cast by the backend.
    """
    params = {}
    for name, shape in param_shapes(spec).items():
        if is_t_bias(name):
            params[name] = np.full(shape, spec.init_bias, dtype=np.float64)
        elif spec.init_other_bias != "uniform" and (name.endswith("/Bias") or name == "softmax_b"):
            params[name] = np.full(shape, float(spec.init_other_bias), dtype=np.float64)
        else:
            params[name] = rng.uniform(-spec.init_scale, spec.init_scale, size=shape)
    return params


def check_params(params, spec, source="checkpoint"):
    """Raise one clear error listing every missing, unexpected or mis-shaped parameter."""
    expected = param_shapes(spec)
    problems = [f"missing {n} {s}" for n, s in expected.items() if n not in params]
    problems += [f"unexpected {n}" for n in params if n not in expected]
    problems += [
        f"{n} is {tuple(params[n].shape)}, config needs {s}"
        for n, s in expected.items()
        if n in params and tuple(params[n].shape) != s
    ]
    if problems:
        raise RHNError(
            f"{source} does not match the config (hidden_size, depth, num_layers, tied, "
            f"vocab_size): " + "; ".join(problems)
        )


def fuse(params, spec):
    """Canonical dict -> the backends' fused layout (NumPy), per layer l:

        W<l>  in_l x 2H    input rows of micro-layer 0, [H | T] side by side
        R<l>  D x H x 2H   recurrent rows of every micro-layer, [H | T]
        b<l>  D x 2H       biases, [H | T]

    plus ``embedding``, ``softmax_w`` (untied) and ``softmax_b`` unchanged. One
    product per micro-layer computes both H and T, and the input part of
    micro-layer 0 can be applied to all time steps at once.
    """
    fused = {n: params[n] for n in ("embedding", "softmax_w", "softmax_b") if n in params}
    for l, n_in in enumerate(spec.layer_input_sizes):
        names = [layer_names(l, k) for k in range(spec.depth)]
        rows = [np.concatenate([params[hm], params[tm]], axis=1) for hm, _, tm, _ in names]
        fused[f"W{l}"] = rows[0][:n_in]
        fused[f"R{l}"] = np.stack([rows[0][n_in:]] + rows[1:])
        fused[f"b{l}"] = np.stack([np.concatenate([params[hb], params[tb]]) for _, hb, _, tb in names])
    return fused


def unfuse(fused, spec):
    """The inverse of ``fuse``: canonical names, in canonical order."""
    H, params = spec.hidden_size, {}
    for l in range(spec.num_layers):
        W, R, b = (np.asarray(fused[f"{p}{l}"]) for p in "WRb")
        for k in range(spec.depth):
            rows = np.concatenate([W, R[0]]) if k == 0 else R[k]
            hm, hb, tm, tb = layer_names(l, k)
            params.update({hm: rows[:, :H], hb: b[k, :H], tm: rows[:, H:], tb: b[k, H:]})
    params.update({n: np.asarray(fused[n]) for n in ("embedding", "softmax_w", "softmax_b") if n in fused})
    return {n: np.array(params[n]) for n in param_shapes(spec)}


def describe(spec):
    """Lines listing every parameter and the total, as the original prints at start."""
    lines = [f"{name}: {shape}" for name, shape in param_shapes(spec).items()]
    lines.append(f"Total number of parameters: {count_params(spec):,}")
    return lines


def hidden_size_for_count(spec, target):
    """The hidden size H whose model (``spec`` otherwise unchanged) has the parameter count closest
    to ``target``; the smaller H on a tie. The count grows with H, so a bisection finds it."""
    from dataclasses import replace

    def count(h):
        return count_params(replace(spec, hidden_size=h))

    lo, hi = 1, 2
    while count(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # count(lo) < target <= count(hi), or lo = 1
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return lo if target - count(lo) <= count(hi) - target else hi
