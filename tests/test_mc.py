"""MC-dropout evaluation: the estimator against a direct NumPy computation, batching, rules."""

import math

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import run_experiment  # noqa: E402
from rhn_core import loop, reference  # noqa: E402
from rhn_core.checkpoint import load_checkpoint  # noqa: E402
from rhn_core.errors import RHNError, TrainingInterrupted  # noqa: E402
from rhn_core.masks import Masks, bernoulli_mask, sample_masks, tie_repeated_tokens  # noqa: E402

DROPS = dict(drop_x=0.25, drop_i=0.3, drop_h=0.2, drop_o=0.3)


@pytest.fixture(scope="module")
def trained(small_text, tmp_path_factory):
    """A small model trained for two epochs (float64), and its config."""
    folder = tmp_path_factory.mktemp("mc")
    updates = dict(
        dataset="chars",
        data_path=small_text,
        batch_size=16,
        num_steps=10,
        dtype="float64",
        seed=4,
        save_dir=str(folder),
        **DROPS,
    )
    run_experiment(named=["tiny"], **updates)
    return dict(updates, load_model=str(folder / "best.npz"))


def direct_mc(cfg, K, mode, threshold):
    """The estimator computed directly: the NumPy reference over the whole stream (B = 1),
    one sample after another, with the same per-sample random draws."""
    from rhn_core.hyperparams import resolve_config

    cfg = resolve_config("tiny", **cfg)
    corpus, spec = loop.corpus_and_spec(cfg)
    params, _ = load_checkpoint(cfg["load_model"])
    ids = corpus.test
    x, y = np.asarray(ids[:-1])[None, :], np.asarray(ids[1:])[None, :]
    prob_sum, accepted, k, ppls = 0.0, 0, 0, []
    while accepted < K:
        rng = np.random.default_rng([cfg["seed"], k])
        k += 1
        m = sample_masks(rng, np.zeros((1, 1), int), spec, tied_noise=True, **DROPS)
        if mode == "faithful":
            mx = np.full(x.shape, m.x[0, 0])  # one scalar for the whole stream
        else:
            T = cfg["num_steps"]
            mx = np.concatenate(
                [
                    tie_repeated_tokens(
                        bernoulli_mask(rng, (1, len(x[0, s : s + T])), DROPS["drop_x"]), x[:, s : s + T]
                    )
                    for s in range(0, x.shape[1], T)
                ],
                axis=1,
            )
        lp = reference.forward(params, spec, x, [np.zeros((1, spec.hidden_size))], Masks(mx, m.i, m.h, m.o))[0]
        log_p = np.take_along_axis(lp[0], y[0][:, None], 1)[:, 0]
        ppls.append(math.exp(-log_p.mean()))
        if ppls[-1] < threshold:
            prob_sum = prob_sum + np.exp(log_p)
            accepted += 1
    p = prob_sum / K
    if mode == "faithful":
        p = np.append(p, 0.0)  # the original's unfilled last slot
    return math.exp(np.mean(-np.log(np.clip(p, 1e-10, 1 - 1e-10)))), k, ppls


def mc(trained, backend="torch", **updates):
    return run_experiment("evaluate_mc", ["tiny"], backend=backend, **{**trained, **updates})


@pytest.mark.parametrize("mode", ["faithful", "corrected"])
def test_estimator_equals_a_direct_computation_with_rejections(trained, mode):
    _, _, ppls = direct_mc(trained, 6, mode, threshold=1e9)
    threshold = float(np.median(ppls))  # about half the samples are rejected
    expected, drawn, _ = direct_mc(trained, 3, mode, threshold)
    run = mc(trained, mc_steps=3, mc_mode=mode, mc_batch_size=2, mc_accept_perplexity=threshold)
    assert run.result == pytest.approx(expected, rel=1e-10)
    assert run.info["mc_samples"] == 3 and run.info["mc_rejected"] == drawn - 3 > 0
    assert len(run.info["mc_curve"]) == 3


def test_faithful_and_corrected_differ_as_documented(trained):
    faithful, corrected = (mc(trained, mc_steps=4, mc_mode=m).result for m in ("faithful", "corrected"))
    # the unfilled slot alone adds 23 nats / len(test) to the faithful mean
    assert faithful != pytest.approx(corrected, rel=1e-6)


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_batched_samples_equal_samples_one_by_one(trained, backend):
    if backend == "tf":
        pytest.importorskip("tensorflow")
    one, many = (mc(trained, backend, mc_steps=5, mc_mode="corrected", mc_batch_size=b) for b in (1, 4))
    assert many.result == pytest.approx(one.result, rel=1e-10)
    np.testing.assert_allclose(many.info["mc_curve"], one.info["mc_curve"], rtol=1e-10)


def test_no_sample_accepted_is_a_clear_error(trained):
    with pytest.raises(RHNError, match=r"only 0 of \d+ MC samples had perplexity < 1.0: raise mc_accept_perplexity"):
        mc(trained, mc_steps=2, mc_accept_perplexity=1.0)


def test_interruption_keeps_the_partial_result(trained, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = loop.InterruptFlag.check

    def check(self):
        calls["n"] += 1
        if calls["n"] == 90:  # inside the second chunk (60 windows of 10 per pass)
            self.requested = True
        original(self)

    monkeypatch.setattr(loop.InterruptFlag, "check", check)
    with pytest.raises(TrainingInterrupted, match=r"stopped after 2 accepted samples .*partial results in"):
        mc(trained, mc_steps=6, mc_mode="corrected", mc_batch_size=2, save_dir=str(tmp_path))
    partial, state = load_checkpoint(str(tmp_path / "mc_corrected_partial.npz"))
    assert int(state["accepted"]) == 2 and partial["prob_sum"].shape == (599,)


@pytest.mark.parametrize(
    "updates, match",
    [
        (dict(mc_steps=0), r"mc_steps=0: give the number of MC samples"),
        (dict(mc_steps=-3), r"mc_steps=-3"),
        (dict(mc_steps=2, mc_mode="fast"), r"mc_mode='fast': use faithful .* or corrected"),
        (dict(mc_steps=2, load_model="/no/such.npz"), r"checkpoint '/no/such.npz' not found"),
        (dict(mc_steps=2, hidden_size=20), r"does not match the config"),
    ],
)
def test_bad_inputs(trained, updates, match):
    with pytest.raises(RHNError, match=match):
        mc(trained, **updates)


def test_plot_and_metrics_are_written(trained, tmp_path):
    run = mc(trained, mc_steps=3, save_dir=str(tmp_path))
    assert (tmp_path / "mc_faithful_perplexity.png").stat().st_size > 1000
    assert run.info["mc_test_perplexity"] == run.result == run.info["mc_curve"][-1]
