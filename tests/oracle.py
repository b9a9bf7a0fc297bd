"""Independent expectations for the loop: the original's batching written out here, the NumPy
reference (rhn_core.reference) for the model, and plain SGD with clipping and weight decay.

Nothing here calls the loop, the readers' batching or a backend, so a test comparing them with
these traces compares two independent computations, not one code path with itself.
"""

import math
import lzma

import numpy as np

from rhn_core import reference
from rhn_core.hyperparams import DEMO_TEXT
from rhn_core.masks import NO_MASKS


def write_text(path, n_chars):
    """The first ``n_chars`` bytes of the demo text as a plain file; returns its path as a string."""
    path.write_bytes(lzma.open(DEMO_TEXT).read()[:n_chars])
    return str(path)


def byte_ids(data):
    """Rank of each byte among the distinct bytes of ``data`` (the chars reader's ids)."""
    values = sorted(set(data))
    rank = {v: i for i, v in enumerate(values)}
    return np.array([rank[b] for b in data]), len(values)


def char_splits(data):
    """(train, valid, test) ids of a text read with dataset=chars: 90 / 5 / 5 % by position."""
    ids, _ = byte_ids(data)
    n_eval = len(ids) // 20
    n = len(ids) - 2 * n_eval
    return ids[:n], ids[n : n + n_eval], ids[n + n_eval :]


def minibatches(ids, B, T):
    """The original's BPTT batches: B rows of len(ids) // B ids; batch i is columns
    [i T, (i + 1) T) with targets one column later; the last target column must exist."""
    L = len(ids) // B
    rows = np.asarray(ids[: B * L]).reshape(B, L)
    return [(rows[:, i * T : (i + 1) * T], rows[:, i * T + 1 : (i + 1) * T + 1]) for i in range((L - 1) // T)]


def zero_state(spec, B):
    return [np.zeros((B, spec.hidden_size)) for _ in range(spec.num_layers)]


def target_log_probs(params, spec, x, y, state, masks=NO_MASKS):
    """log p(y) (B x T) and the final state, from the reference forward pass."""
    lp, final, _ = reference.forward(params, spec, x, state, masks)
    return np.take_along_axis(lp, y[..., None], -1)[..., 0], final


def batched_perplexity(params, spec, ids, B, T):
    """Per-epoch evaluation: exp of the mean NLL over every scored token, state carried from zeros."""
    state, nll, count = zero_state(spec, B), 0.0, 0
    for x, y in minibatches(ids, B, T):
        log_p, state = target_log_probs(params, spec, x, y, state)
        nll, count = nll - log_p.sum(), count + x.size
    return math.exp(nll / count)


def full_perplexity(params, spec, ids):
    """The final pass: all N - 1 next-token predictions of the stream in one B = 1 sequence."""
    ids = np.asarray(ids)
    log_p, _ = target_log_probs(params, spec, ids[None, :-1], ids[None, 1:], zero_state(spec, 1))
    return math.exp(-log_p.mean())


def sgd_step(params, grads, lr, max_grad_norm):
    """theta - lr * g * min(1, max_grad_norm / ||g||), ||g|| the global norm (written out again)."""
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    factor = lr * (max_grad_norm / norm if norm > max_grad_norm else 1.0)
    return {n: params[n] - factor * grads[n] for n in params}


def training_epoch(params, spec, ids, B, T, lr, weight_decay, max_grad_norm, masks_of=None, carry=True):
    """One epoch of the original's training: the state carried across minibatches from zeros
    (``carry=False``: reset at every minibatch, the bug a test must catch), masks from
    ``masks_of(x)``. Returns (params, the objectives J of the steps)."""
    state, objectives = zero_state(spec, B), []
    for x, y in minibatches(ids, B, T):
        masks = masks_of(x) if masks_of else NO_MASKS
        start = state if carry else zero_state(spec, B)
        j, _, state = reference.objective(params, spec, x, y, start, masks, weight_decay)
        grads = reference.gradients(params, spec, x, y, start, masks, weight_decay)
        params = sgd_step(params, grads, lr, max_grad_norm)
        objectives.append(j)
    return params, objectives
