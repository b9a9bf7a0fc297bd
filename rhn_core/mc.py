"""Monte-Carlo dropout evaluation (the original's ``evaluate_mc``; docs/faithfulness.md), batched.

For each sample k the training dropout masks are drawn once and kept for a whole
pass over the test stream (state carried from zeros); the probability of every
target is recorded; a sample is accepted only if its own perplexity is below
``mc_accept_perplexity`` (rejected ones are replaced); the estimate averages the
*probabilities* of the accepted samples per position, then takes the geometric
mean over positions: exp(mean_j -log clip(mean_k p_k(j), 1e-10, 1 - 1e-10)).

Modes (``mc_mode``):

* ``faithful``: as the original, which ran B = T = 1: the word (embedding) mask
  is ONE scalar per sample for the whole stream (with drop_x = 0.25 a quarter of
  the samples have every embedding zeroed; they are then rejected), and the
  probability array has len(test) slots of which the last is never filled: it
  enters the mean as clip(0) = 1e-10 (docs/faithfulness.md, MC quirks).
* ``corrected``: word masks per token position, tied per word type within each
  window of ``num_steps`` tokens as in training; the N - 1 real predictions are
  scored.

Speed: the samples of a chunk (``mc_batch_size``) run together as the rows of
one batch, each row with its own masks. Every sample draws from its own
generator, seeded by (seed, sample index), so the result does not depend on how
samples are chunked (tested: batched equals one by one). Only the running sum
of accepted probabilities is kept (memory does not grow with the sample count).
"""

import math
import os

import numpy as np

from .data import readers
from .checkpoint import check_writable, remove_stale_temporaries, save_checkpoint
from .errors import RHNError, TrainingInterrupted
from .hyperparams import check_config
from .masks import Masks, bernoulli_mask, sample_masks, tie_repeated_tokens
from .progress import progress_bar
from .runlock import RunFolder
from .runtime import InterruptFlag, Stop, bits, load_for_evaluation

MODES = ("faithful", "corrected")
CLIP = 1e-10


def check_mc_config(cfg):
    check_config(cfg)  # types and ranges of every key first
    if not cfg["load_model"]:
        raise RHNError("evaluate_mc needs load_model=PATH, a checkpoint such as runs/<dataset>_<seed>/best.npz")
    if not isinstance(cfg["mc_steps"], int) or cfg["mc_steps"] <= 0:
        raise RHNError(f"mc_steps={cfg['mc_steps']!r}: give the number of MC samples, e.g. mc_steps=1000")
    if cfg["mc_mode"] not in MODES:
        raise RHNError(f"mc_mode={cfg['mc_mode']!r}: use faithful (as the original) or corrected")
    if not cfg["mc_accept_perplexity"] > 0:
        raise RHNError(f"mc_accept_perplexity={cfg['mc_accept_perplexity']!r} must be positive")
    if not isinstance(cfg["mc_batch_size"], int) or cfg["mc_batch_size"] < 1:
        raise RHNError(f"mc_batch_size={cfg['mc_batch_size']!r} must be a positive integer")


def estimate(prob_sum, count, mode):
    """MC perplexity from the per-position sum of accepted probabilities."""
    p = prob_sum / count
    if mode == "faithful":
        p = np.append(p, 0.0)  # the original's never-filled last slot
    return math.exp(float(np.mean(-np.log(np.clip(p, CLIP, 1 - CLIP)))))


def sample_rng(seed, k):
    """The generator of sample k: independent of how samples are grouped into batches."""
    return np.random.default_rng([seed, k])


def mc_pass(backend, spec, cfg, ids, rngs, interrupt=None):
    """log p of every target (rows = samples, N - 1 columns), each row with its own masks."""
    drops = dict(
        drop_x=cfg["drop_x"],
        drop_i=cfg["drop_i"],
        drop_h=cfg["drop_h"],
        drop_o=cfg["drop_o"],
        tied_noise=cfg["tied_noise"],
    )
    B, faithful = len(rngs), cfg["mc_mode"] == "faithful"
    # Masks of a whole pass, drawn first as the original did at its step 0 (B = T = 1).
    first = [sample_masks(rng, np.zeros((1, 1), dtype=np.int64), spec, **drops) for rng in rngs]
    stack = lambda arrays: None if arrays[0] is None else np.concatenate(arrays)
    fixed_i = None if first[0].i is None else tuple(stack([m.i[l] for m in first]) for l in range(spec.num_layers))
    fixed_h = None if first[0].h is None else tuple(stack([m.h[l] for m in first]) for l in range(spec.num_layers))
    fixed_o, word = stack([m.o for m in first]), stack([m.x for m in first])  # word: B x 1 scalars
    # Faithful: the word mask is constant, so any window scores the same; keep the B x T x V
    # logits near 2^24 values. Corrected: windows of num_steps, the span of the word tying.
    window = min(cfg["full_eval_num_steps"], max(1, 2**24 // (B * spec.vocab_size))) if faithful else cfg["num_steps"]
    out, state, pos = np.empty((B, len(ids) - 1)), backend.zero_state(B), 0
    for x, y in readers.stream_windows(ids, window):
        T = x.shape[1]
        if word is None:
            mx = None
        elif faithful:
            mx = np.repeat(word, T, axis=1)
        else:  # per position, tied per word type within the window, as in training
            mx = np.concatenate([tie_repeated_tokens(bernoulli_mask(rng, (1, T), cfg["drop_x"]), x) for rng in rngs])
        lp, state = backend.target_log_probs(
            np.repeat(x, B, 0), np.repeat(y, B, 0), state, Masks(mx, fixed_i, fixed_h, fixed_o)
        )
        out[:, pos : pos + T] = lp
        pos += T
        if interrupt is not None:
            interrupt.check()
    return out


def plot_curve(curve, path, mode):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(curve) + 1), curve)
    ax.set_xlabel("accepted MC samples")
    ax.set_ylabel("test perplexity (ensemble of samples)")
    ax.set_title(f"MC dropout evaluation ({mode})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_mc(cfg, backend_name, run):
    """Sacred ``evaluate_mc``: the MC-dropout test perplexity of ``load_model``."""
    check_mc_config(cfg)
    out_dir = cfg["save_dir"] or os.path.dirname(os.path.abspath(cfg["load_model"]))
    # One writer per folder, taken before any work: a training run still writing there (or another MC
    # evaluation) refuses this one.
    folder = RunFolder.claim(out_dir, command="MC evaluation")
    try:
        # reading=None: the one writer of its output folder (by default load_model's) reads without a note
        corpus, spec, backend = load_for_evaluation(cfg, backend_name, "evaluate_mc")
        check_writable(out_dir)  # the partial results and the plot are written hours later
        remove_stale_temporaries(out_dir)
        return _evaluate_mc(cfg, run, backend, spec, corpus, out_dir)
    except BaseException:
        folder.abandon()  # a folder this created and left empty is removed
        raise
    finally:
        folder.release()


def _evaluate_mc(cfg, run, backend, spec, corpus, out_dir):
    partial_path = os.path.join(out_dir, f"mc_{cfg['mc_mode']}_partial.npz")
    K, mode, ids = cfg["mc_steps"], cfg["mc_mode"], corpus.test
    prob_sum, accepted, drawn, curve = np.zeros(len(ids) - 1), 0, 0, []
    max_draws = 10 * K + 10
    print(
        f"MC dropout evaluation ({mode}): {K} accepted samples of the test set, "
        f"{cfg['mc_batch_size']} at a time, accepted if their perplexity < {cfg['mc_accept_perplexity']}"
    )
    with (
        InterruptFlag() as interrupt,
        progress_bar(total=K, desc="MC samples", unit="sample", disable=not cfg["progress"]) as bar,
    ):
        try:
            while accepted < K:
                if drawn >= max_draws:
                    raise RHNError(
                        f"only {accepted} of {drawn} MC samples had perplexity < "
                        f"{cfg['mc_accept_perplexity']}: raise mc_accept_perplexity or check the model"
                    )
                rngs = [sample_rng(cfg["seed"], drawn + r) for r in range(min(cfg["mc_batch_size"], K - accepted))]
                log_p = mc_pass(backend, spec, cfg, ids, rngs, interrupt)
                drawn += len(rngs)
                for row in log_p:
                    # compared in log space: a sample with perplexity beyond a float's range is rejected, not a crash
                    if accepted < K and -row.mean() < math.log(cfg["mc_accept_perplexity"]):
                        prob_sum += np.exp(row)
                        accepted += 1
                        curve.append(estimate(prob_sum, accepted, mode))
                        run.log_scalar("mc_test_perplexity", curve[-1], accepted)
                        bar.update(1)
                bar.set_postfix(ppl=f"{curve[-1]:.2f}" if curve else "-", rejected=drawn - accepted)
        except Stop:
            if accepted:
                save_checkpoint(
                    partial_path,
                    {"prob_sum": prob_sum},
                    {"accepted": accepted, "drawn": drawn, "curve": np.array(curve)},
                )
            raise TrainingInterrupted(
                f"MC evaluation stopped after {accepted} accepted samples"
                + (f" (estimate so far {curve[-1]:.3f}); partial results in {partial_path}" if curve else "")
            )
    ppl = curve[-1]
    print(
        f"MC Test Perplexity ({mode}, {accepted} samples, {drawn - accepted} rejected): {ppl:.3f} Bits: {bits(ppl):.3f}"
    )
    run.info.update(
        mc_test_perplexity=ppl,
        mc_test_bits=bits(ppl),
        mc_mode=mode,
        mc_samples=accepted,
        mc_rejected=drawn - accepted,
        mc_curve=curve,
    )
    plot = os.path.join(out_dir, f"mc_{mode}_perplexity.png")
    plot_curve(curve, plot, mode)
    run.add_artifact(plot)
    return ppl
