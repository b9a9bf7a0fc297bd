"""Variational dropout masks, sampled with NumPy once per minibatch (docs/faithfulness.md).

Masks are inverted-dropout scaled (1/keep where kept, 0 where dropped) and are
data: every backend and the NumPy reference multiply by the same arrays, so
dropout-on runs agree exactly across backends. A mask whose drop probability is
0 is ``None`` (nothing to multiply).
"""

from typing import NamedTuple, Optional, Tuple

import numpy as np


class Masks(NamedTuple):
    """Masks of one minibatch; ``i`` and ``h`` hold one array per layer."""

    x: Optional[np.ndarray]  # B x T: whole embedding vector per token
    i: Optional[Tuple[np.ndarray, ...]]  # B x in_size (layer 0), B x H (layers > 0): layer input
    h: Optional[Tuple[np.ndarray, ...]]  # B x H: recurrent state in every micro-layer, H and T
    # (with tied_noise=False, i and h are twice as wide: [mask for H | mask for T])
    o: Optional[np.ndarray]  # B x H: top layer's output


NO_MASKS = Masks(None, None, None, None)


def bernoulli_mask(rng, shape, drop):
    """1/keep with probability keep = 1 - drop, else 0; ``None`` when drop is 0."""
    if drop == 0:
        return None
    keep = 1.0 - drop
    return (rng.random(shape) < keep) / keep


def tie_repeated_tokens(mask, x):
    """Give every later occurrence of a token in a row the mask of its first occurrence.

    The original copies the mask forward, token by token, within each row of the
    B x T window; the result is that all occurrences share the first one's value.
    """
    tied = np.empty_like(mask)
    for b in range(x.shape[0]):
        _, first, inverse = np.unique(x[b], return_index=True, return_inverse=True)
        tied[b] = mask[b, first][inverse.reshape(-1)]
    return tied


def sample_masks(rng, x, spec, drop_x, drop_i, drop_h, drop_o, tied_noise=True):
    """Masks for the minibatch ``x`` (B x T ids) of a model with ``spec`` (params.ModelSpec).

    Drawn in a fixed order (x, i per layer, h per layer, o) from ``rng``, a
    ``numpy.random.Generator``, so a run is reproducible from its seed. With
    ``tied_noise`` (the TensorFlow original) the H and T transforms share the input
    and state masks; without it each has its own (Torch7; Theano's tied_noise=False).
    """
    B, T = x.shape
    per_gate = 1 if tied_noise else 2
    mx = bernoulli_mask(rng, (B, T), drop_x)
    if mx is not None:
        mx = tie_repeated_tokens(mx, x)
    mi = tuple(bernoulli_mask(rng, (B, per_gate * n), drop_i) for n in spec.layer_input_sizes) if drop_i else None
    mh = (
        tuple(bernoulli_mask(rng, (B, per_gate * spec.hidden_size), drop_h) for _ in range(spec.num_layers))
        if drop_h
        else None
    )
    mo = bernoulli_mask(rng, (B, spec.hidden_size), drop_o)
    return Masks(mx, mi, mh, mo)


def sampler(cfg, spec):
    """``f(rng, x) -> Masks`` with the training drop probabilities of ``cfg``."""
    drops = {k: cfg[k] for k in ("drop_x", "drop_i", "drop_h", "drop_o", "tied_noise")}
    return lambda rng, x: sample_masks(rng, x, spec, **drops)
