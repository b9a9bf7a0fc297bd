"""Every config key reaches the place where it acts.

``print_config`` lists the keys; each one needs a test here, registered with
``@effect_of("key")``, that changes the key and checks what it changes against an
expectation worked out independently (numbers by hand, the NumPy reference, the batching
written out in ``oracle.py``), going through the same path a run takes (the config ->
``loop.Trainer`` / ``loop.evaluate`` / ``mc.evaluate_mc`` -> backend). A new key without
such a test makes ``test_every_config_key_has_an_effect_test`` fail with its name.
"""

import math
import os

import numpy as np
import pytest

pytest.importorskip("torch")

import oracle  # noqa: E402
from conftest import run_experiment  # noqa: E402
from rhn_core import loop, mc, progress, reference, sample  # noqa: E402
from rhn_core.checkpoint import load_checkpoint  # noqa: E402
from rhn_core.errors import RHNError  # noqa: E402
from rhn_core.hyperparams import resolve_config  # noqa: E402
from rhn_core.params import is_t_bias  # noqa: E402

EFFECT_TESTS = {}  # config key -> names of the tests that show its effect


def effect_of(*keys):
    """Register the decorated test as showing the effect of ``keys``."""

    def register(test):
        for key in keys:
            EFFECT_TESTS.setdefault(key, []).append(test.__name__)
        return test

    return register


def test_every_config_key_has_an_effect_test():
    keys = set(run_experiment("print_config").config)
    missing = sorted(keys - set(EFFECT_TESTS))
    assert not missing, (
        f"config key(s) {', '.join(missing)} have no effect test: add a test to tests/test_config_keys.py "
        f"decorated with @effect_of({missing[0]!r}) that changes the key and checks what it changes "
        f"against an independent expectation"
    )
    stale = sorted(set(EFFECT_TESTS) - keys)
    assert not stale, f"tests/test_config_keys.py registers keys that print_config does not have: {stale}"


# --- a tiny character-level setup -----------------------------------------------------------
# 900 characters: train 810 (B = 3 rows of 270: 53 minibatches of T = 5, where 270 // 5 = 54),
# valid and test 45 each (rows of 15: 2 minibatches, where 15 // 5 = 3).
N_CHARS, B, T = 900, 3, 5


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return oracle.write_text(tmp_path_factory.mktemp("keys") / "text.txt", N_CHARS)


@pytest.fixture(scope="module")
def data(text):
    return open(text, "rb").read()


def config(text, save_dir, **updates):
    base = dict(
        dataset="chars",
        data_path=text,
        batch_size=B,
        num_steps=T,
        hidden_size=8,
        depth=2,
        max_max_epoch=1,
        dtype="float64",
        device="cpu",
        seed=1,
        progress=False,
        save_dir=str(save_dir),
    )
    return resolve_config("tiny", **{**base, **updates})


class FakeRun:
    """What the loop uses of a Sacred run."""

    def __init__(self):
        self.info, self.observers, self.scalars = {}, [], []

    def log_scalar(self, name, value, step):
        self.scalars.append((name, step, value))

    def add_artifact(self, path, name=None):
        pass


def trainer(text, save_dir, **updates):
    return loop.Trainer(config(text, save_dir, **updates), "torch", FakeRun())


def spy(obj, method):
    """Record the positional arguments of every call of ``obj.method``."""
    calls, original = [], getattr(obj, method)

    def recording(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    setattr(obj, method, recording)
    return calls


# --- data -----------------------------------------------------------------------------------
@effect_of("data_path")
def test_data_path_is_the_file_that_is_read(text, data, tmp_path):
    other = tmp_path / "other.txt"
    other.write_bytes(b"ab" * 300 + b"c" * 300)  # 900 bytes of 3 values: ids 0, 1, 2
    for path, content in ((text, data), (str(other), other.read_bytes())):
        corpus = trainer(path, tmp_path).corpus
        train, valid, test = oracle.char_splits(content)
        assert corpus.vocab_size == oracle.byte_ids(content)[1]
        for got, expected in ((corpus.train, train), (corpus.valid, valid), (corpus.test, test)):
            np.testing.assert_array_equal(got, expected)


@effect_of("dataset")
def test_dataset_picks_the_reader(text, synthetic_ptb, synthetic_char_dirs, tmp_path):
    words = loop.corpus_and_spec(config(synthetic_ptb, tmp_path, dataset="ptb", vocab_size=10000))[0]
    assert (words.unit, words.vocab_size) == ("word", 10000)
    for name, v in (("enwik8", 205), ("text8", 27)):
        corpus = loop.corpus_and_spec(
            config(synthetic_char_dirs, tmp_path, dataset=name, vocab_size=v, num_test_symbols=400)
        )[0]
        assert (corpus.unit, corpus.vocab_size, len(corpus.train)) == ("char", v, 6000 - 800)
    chars = loop.corpus_and_spec(config(text, tmp_path))[0]
    assert (chars.unit, len(chars.train)) == ("char", 810)


@effect_of("vocab_size")
def test_vocab_size_follows_the_dataset_and_is_checked_against_the_data(synthetic_char_dirs, text, data, tmp_path):
    for name, v in (("ptb", 10000), ("enwik8", 205), ("text8", 27), ("chars", 0)):
        assert resolve_config(dataset=name)["vocab_size"] == v  # the original's V per dataset
    text8 = dict(dataset="text8", num_test_symbols=400)
    assert loop.corpus_and_spec(config(synthetic_char_dirs, tmp_path, vocab_size=27, **text8))[1].vocab_size == 27
    with pytest.raises(RHNError, match="27 distinct chars but vocab_size=26"):
        loop.corpus_and_spec(config(synthetic_char_dirs, tmp_path, vocab_size=26, **text8))
    # chars: 0 = V taken from the data, which sizes the model
    v = oracle.byte_ids(data)[1]
    assert trainer(text, tmp_path, vocab_size=0).backend.get_params()["embedding"].shape == (v, 8)


@effect_of("num_test_symbols")
def test_num_test_symbols_sizes_valid_and_test(synthetic_char_dirs, tmp_path):
    for n in (400, 1000):
        corpus = loop.corpus_and_spec(
            config(synthetic_char_dirs, tmp_path, dataset="text8", vocab_size=27, num_test_symbols=n)
        )[0]
        assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (6000 - 2 * n, n, n)


# --- the model's shape and initialisation -----------------------------------------------------
@effect_of("hidden_size", "depth", "num_layers", "tied")
def test_shape_keys_shape_the_parameters(text, data, tmp_path):
    V = oracle.byte_ids(data)[1]
    H = V + 9  # V < H and untied: the V x V embedding of the character models
    params = trainer(text, tmp_path, hidden_size=H, depth=2, num_layers=1, tied=False).backend.get_params()
    assert params["embedding"].shape == (V, V) and params["softmax_w"].shape == (H, V)
    assert params["RHN0/h_0/Matrix"].shape == (V + H, H) and params["RHN0/t_1/Matrix"].shape == (H, H)
    assert "RHN0/h_2/Matrix" not in params and "RHN1/h_0/Matrix" not in params
    params = trainer(text, tmp_path, hidden_size=6, depth=3, num_layers=2, tied=True).backend.get_params()
    assert params["embedding"].shape == (V, 6) and "softmax_w" not in params  # tied: E^T is the softmax
    assert params["RHN0/t_2/Matrix"].shape == (6, 6) and params["RHN1/h_0/Matrix"].shape == (12, 6)
    assert len(params) == 1 + 2 * 3 * 4 + 1


@effect_of("init_scale")
def test_init_scale_bounds_the_uniform_initialisation(text, tmp_path):
    for scale in (0.04, 0.3):
        params = trainer(text, tmp_path, init_scale=scale, hidden_size=12).backend.get_params()
        for name, p in params.items():
            if not is_t_bias(name):
                assert 0.8 * scale < np.abs(p).max() <= scale, name


@effect_of("init_bias", "init_other_bias")
def test_bias_keys_reach_the_parameters(text, tmp_path):
    params = trainer(text, tmp_path, init_bias=-3.5, init_other_bias=0.25, depth=3).backend.get_params()
    for name, p in params.items():
        if is_t_bias(name):
            assert np.all(p == -3.5), name
        elif name.endswith("/Bias") or name == "softmax_b":
            assert np.all(p == 0.25), name
        else:
            assert np.ptp(p) > 0.02, name  # matrices stay uniform
    uniform = trainer(text, tmp_path, init_bias=-1.0, init_other_bias="uniform", depth=3).backend.get_params()
    assert np.all(uniform["RHN0/t_2/Bias"] == -1.0)
    for name in ("RHN0/h_0/Bias", "RHN0/h_2/Bias", "softmax_b"):
        assert 0 < np.abs(uniform[name]).max() <= 0.04 and np.ptp(uniform[name]) > 0.01, name


@effect_of("seed")
def test_seed_fixes_the_initialisation_and_the_masks(text, tmp_path):
    a, b, c = (trainer(text, tmp_path / str(i), seed=s) for i, s in enumerate((1, 1, 2)))  # three runs: three folders
    pa, pb, pc = (t.backend.get_params() for t in (a, b, c))
    assert all(np.array_equal(pa[n], pb[n]) for n in pa) and not np.array_equal(pa["embedding"], pc["embedding"])
    x = np.zeros((B, T), dtype=int)
    ma, mb, mc_ = (t.masks(t.rng, x) for t in (a, b, c))
    assert np.array_equal(ma.o, mb.o) and not np.array_equal(ma.o, mc_.o)
    assert run_experiment("print_config", seed=123).config["seed"] == 123


# --- dropout masks --------------------------------------------------------------------------
@effect_of("drop_x", "drop_i", "drop_h", "drop_o")
def test_drop_keys_set_the_rate_and_scale_of_the_training_masks(text, data, tmp_path):
    drops = dict(drop_x=0.1, drop_i=0.6, drop_h=0.3, drop_o=0.45)
    t = trainer(text, tmp_path, hidden_size=40, **drops)
    rng = np.random.default_rng(0)
    V = oracle.byte_ids(data)[1]
    m = t.masks(rng, rng.integers(0, V, (500, 20)))
    arrays = {"drop_x": m.x, "drop_i": m.i[0], "drop_h": m.h[0], "drop_o": m.o}
    for key, mask in arrays.items():
        p = drops[key]
        assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}, key  # inverted dropout
        assert abs((mask == 0).mean() - p) < 0.03, key
    assert m.i[0].shape == m.h[0].shape == m.o.shape == (500, 40)  # V = 55 > H: the input is H wide
    off = trainer(text, tmp_path / "off", drop_x=0.0, drop_i=0.0, drop_h=0.0, drop_o=0.0)
    assert off.masks(rng, np.zeros((B, T), dtype=int)) == (None, None, None, None)


@effect_of("tied_noise")
def test_tied_noise_decides_whether_h_and_t_share_masks(text, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = np.zeros((200, T), dtype=int)
    shared = trainer(text, tmp_path, tied_noise=True, drop_i=0.5, drop_h=0.5).masks(rng, x)
    assert shared.h[0].shape == (200, 8) and shared.i[0].shape[1] < 16
    separate = trainer(text, tmp_path, tied_noise=False, drop_i=0.5, drop_h=0.5).masks(rng, x)
    for masks, width in ((separate.h[0], 8), (separate.i[0], shared.i[0].shape[1])):
        assert masks.shape == (200, 2 * width)
        assert 0.3 < (masks[:, :width] != masks[:, width:]).mean() < 0.7  # independent halves
    # the MC evaluation draws its masks from the config too
    model = train_small_model(text, tmp_path / "run")
    from rhn_core.backends import torch_rhn

    calls = spy_class(monkeypatch, torch_rhn.Backend, "target_log_probs")
    mc.evaluate_mc(
        config(text, tmp_path, load_model=model, mc_steps=1, mc_accept_perplexity=1e9, tied_noise=False, drop_h=0.5),
        "torch",
        FakeRun(),
    )
    assert {args[4].h[0].shape for args, _ in calls} == {(1, 16)}


def spy_class(monkeypatch, cls, method):
    """Record (arguments with self first, result) of every call of ``cls.method``."""
    calls, original = [], getattr(cls, method)

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, result))
        return result

    monkeypatch.setattr(cls, method, recording)
    return calls


# --- training -------------------------------------------------------------------------------
def train_small_model(text, save_dir, **updates):
    """Train one epoch; the path of its best.npz."""
    trainer(text, save_dir, **updates).train()
    return str(save_dir / "best.npz")


@effect_of("learning_rate", "lr_decay", "max_epoch", "max_max_epoch")
@pytest.mark.parametrize("max_epoch, expected", [(1, [0.4, 0.1, 0.025]), (2, [0.4, 0.4, 0.1])])
def test_schedule_keys_give_the_learning_rate_of_every_step(text, tmp_path, max_epoch, expected):
    t = trainer(text, tmp_path, learning_rate=0.4, lr_decay=4.0, max_epoch=max_epoch, max_max_epoch=3)
    calls = spy(t.backend, "train_step")
    t.train()
    steps = len(oracle.minibatches(np.arange(810), B, T))  # 53 per epoch
    assert [c[4] for c in calls] == pytest.approx([lr for lr in expected for _ in range(steps)], rel=1e-15)
    assert len(t.run.info["logs"]["valid_perplexity"]) == 3 + 1
    assert [v for n, _, v in t.run.scalars if n == "learning_rate"] == pytest.approx(expected, rel=1e-15)


def first_step(t, lr=0.5):
    """One training step of ``t``'s backend on the first minibatch (no dropout), and its
    reference: (params before, after, gradients(weight_decay) from the NumPy reference)."""
    x, y = oracle.minibatches(t.corpus.train, B, T)[0]
    before = t.backend.get_params()
    t.backend.train_step(x, y, None, t.backend.zero_state(B), lr)
    grads = lambda wd: reference.gradients(before, t.spec, x, y, oracle.zero_state(t.spec, B), weight_decay=wd)
    return before, t.backend.get_params(), grads


@effect_of("weight_decay")
def test_weight_decay_enters_the_gradient(text, tmp_path):
    before, after, grads = first_step(trainer(text, tmp_path, weight_decay=0.5, max_grad_norm=1e6))
    expected, without = (oracle.sgd_step(before, grads(wd), 0.5, 1e6) for wd in (0.5, 0.0))
    for n in expected:
        np.testing.assert_allclose(after[n], expected[n], rtol=0, atol=1e-12, err_msg=n)
        assert np.abs(expected[n] - without[n]).max() > 1e-3, n  # lr * 0.5 * theta: informative


@effect_of("max_grad_norm")
def test_max_grad_norm_clips_the_step(text, tmp_path):
    before, after, grads = first_step(trainer(text, tmp_path, max_grad_norm=0.05, weight_decay=0.0))
    grads = grads(0.0)
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    assert norm > 0.5  # clipping is active: the step is 0.05 / norm of the plain one
    for n in before:
        np.testing.assert_allclose(after[n], before[n] - 0.5 * 0.05 / norm * grads[n], rtol=0, atol=1e-13, err_msg=n)


@effect_of("dtype")
def test_dtype_is_the_precision_of_the_computation(text, tmp_path):
    for dtype, atol in (("float64", 1e-13), ("float32", 1e-6)):
        before, after, grads = first_step(
            trainer(text, tmp_path / dtype, dtype=dtype, max_grad_norm=1e6, weight_decay=0.0)
        )
        expected = oracle.sgd_step(before, grads(0.0), 0.5, 1e6)
        assert after["embedding"].dtype == np.dtype(dtype)
        worst = max(np.abs(after[n] - expected[n]).max() for n in expected)
        assert worst < atol and (dtype == "float64" or worst > 1e-12), (dtype, worst)  # float32 rounds


@effect_of("device")
def test_device_places_the_model(text, tmp_path):
    import torch

    assert trainer(text, tmp_path, device="cpu").backend.device.type == "cpu"
    assert trainer(text, tmp_path, device="auto").backend.device.type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    if not torch.cuda.is_available():
        with pytest.raises(RHNError, match=r"cannot start on device='cuda:0'.*use device=cpu"):
            trainer(text, tmp_path, device="cuda:0")


@effect_of("batch_size", "num_steps")
def test_batch_shape_keys_cut_the_stream_as_the_original(text, tmp_path):
    for b, t_ in ((3, 5), (2, 7)):
        t = trainer(text, tmp_path / f"{b}x{t_}", batch_size=b, num_steps=t_)
        calls = spy(t.backend, "train_step")
        t.train_epoch(0.1)
        expected = oracle.minibatches(t.corpus.train, b, t_)
        assert len(calls) == len(expected) == (810 // b - 1) // t_
        for (x, y, *_), (ex, ey) in zip(calls, expected):
            np.testing.assert_array_equal(x, ex)
            np.testing.assert_array_equal(y, ey)


@effect_of("save_dir")
def test_save_dir_receives_the_checkpoints(text, tmp_path, monkeypatch):
    trainer(text, tmp_path / "here").train()
    assert sorted(os.listdir(tmp_path / "here")) == ["best.npz", "last.npz"]
    monkeypatch.chdir(tmp_path)
    t = loop.Trainer(config(text, "", seed=7), "torch", FakeRun())
    t.train()
    assert sorted(os.listdir(tmp_path / "runs" / "chars_7")) == ["best.npz", "last.npz"]


@effect_of("resume")
def test_resume_continues_from_the_checkpoint(text, tmp_path):
    trainer(text, tmp_path).train()
    saved, state = load_checkpoint(str(tmp_path / "last.npz"))
    t = trainer(text, tmp_path / "more", resume=str(tmp_path / "last.npz"), max_max_epoch=2)
    assert (t.epoch, t.step, int(state["epoch"])) == (2, 0, 2)
    params = t.backend.get_params()
    assert all(np.array_equal(params[n], saved[n]) for n in saved)
    fresh = trainer(text, tmp_path / "fresh").backend.get_params()
    assert not np.array_equal(fresh["embedding"], saved["embedding"])


@effect_of("resume_other_data")
def test_resume_other_data_lets_a_checkpoint_continue_on_other_data(text, data, tmp_path):
    trainer(text, tmp_path).train()
    saved, _ = load_checkpoint(str(tmp_path / "last.npz"))
    other = bytearray(data)
    j = next(j for j in range(1, len(other)) if other[j] != other[0])
    other[0], other[j] = other[j], other[0]  # the same characters: the same vocabulary, other data
    (tmp_path / "other.txt").write_bytes(bytes(other))
    resume = dict(resume=str(tmp_path / "last.npz"), max_max_epoch=2)
    with pytest.raises(RHNError, match=r"last.npz was trained on other data than .*other.txt"):
        trainer(str(tmp_path / "other.txt"), tmp_path / "refused", **resume)
    t = trainer(str(tmp_path / "other.txt"), tmp_path / "allowed", resume_other_data=True, **resume)
    assert t.epoch == 2 and all(np.array_equal(t.backend.get_params()[n], saved[n]) for n in saved)
    assert trainer(text, tmp_path / "same", **resume).epoch == 2  # its own data needs no override


# --- evaluation -----------------------------------------------------------------------------
@effect_of("load_model")
def test_load_model_is_the_checkpoint_evaluated(text, tmp_path):
    results = []
    for seed in (1, 2):
        model = train_small_model(text, tmp_path / str(seed), seed=seed)
        cfg = config(text, tmp_path, load_model=model)
        params, _ = load_checkpoint(model)
        t = trainer(text, tmp_path / f"spec{seed}")
        got = loop.evaluate(cfg, "torch", FakeRun())
        assert got["valid_perplexity"] == pytest.approx(
            oracle.batched_perplexity(params, t.spec, t.corpus.valid, B, T), rel=1e-12
        )
        assert got["full_test_perplexity"] == pytest.approx(
            oracle.full_perplexity(params, t.spec, t.corpus.test), rel=1e-12
        )
        results.append(got["valid_perplexity"])
    assert results[0] != pytest.approx(results[1], rel=1e-6)


@effect_of("full_eval_num_steps")
def test_full_eval_num_steps_is_the_window_of_the_final_pass(text, tmp_path):
    for window, expected in ((10, [10, 10, 10, 10, 4]), (30, [30, 14])):  # 44 predictions of 45 test chars
        t = trainer(text, tmp_path / str(window), full_eval_num_steps=window)
        calls = spy(t.backend, "eval_step")
        t.evaluator.full("test")
        assert [c[0].shape for c in calls] == [(1, n) for n in expected]


@effect_of("progress")
def test_progress_shows_bars(text, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)  # not a terminal: a line per update, not once a minute
    for shown in (True, False):
        trainer(text, tmp_path, progress=shown).evaluator.batched("valid")
        err = capsys.readouterr().err
        assert ("valid (batched)" in err) == shown


# --- MC-dropout evaluation --------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(text, tmp_path_factory):
    return train_small_model(text, tmp_path_factory.mktemp("mc"))


def evaluate_mc(text, tmp_path, model, **updates):
    run = FakeRun()
    updates = {"mc_accept_perplexity": 1e9, **updates}
    mc.evaluate_mc(config(text, tmp_path, load_model=model, **updates), "torch", run)
    return run.info


@effect_of("mc_steps", "mc_batch_size")
def test_mc_steps_and_batch_size_set_the_samples_and_their_grouping(text, tmp_path, model, monkeypatch):
    from rhn_core.backends import torch_rhn

    for steps, batch, groups in ((3, 2, [2, 1]), (5, 4, [4, 1]), (5, 8, [5])):
        calls = spy_class(monkeypatch, torch_rhn.Backend, "target_log_probs")
        info = evaluate_mc(text, tmp_path, model, mc_steps=steps, mc_batch_size=batch)
        assert info["mc_samples"] == steps and len(info["mc_curve"]) == steps
        rows = [args[1].shape[0] for args, _ in calls]
        assert sorted(set(rows), reverse=True) == sorted(set(groups), reverse=True) and rows[0] == groups[0]
        monkeypatch.undo()


@effect_of("mc_accept_perplexity")
def test_mc_accept_perplexity_rejects_samples(text, tmp_path, model, monkeypatch):
    from rhn_core.backends import torch_rhn

    calls = spy_class(monkeypatch, torch_rhn.Backend, "target_log_probs")
    info = evaluate_mc(text, tmp_path, model, mc_steps=16, mc_batch_size=16, mc_mode="corrected")
    assert info["mc_rejected"] == 0
    # each sample's own perplexity over the stream, from what the backend returned (sample k
    # draws from its own generator, so it is the same sample in any grouping)
    own = np.exp(-np.concatenate([result[0] for _, result in calls], axis=1).mean(axis=1))
    monkeypatch.undo()
    threshold, K, batch = float(np.median(own)), 3, 2
    accepted = drawn = 0
    while accepted < K:  # the documented rule: groups of min(batch, K - accepted), accept if below
        group = range(drawn, drawn + min(batch, K - accepted))
        drawn += len(group)
        accepted += min(K - accepted, sum(own[k] < threshold for k in group))
    info = evaluate_mc(
        text, tmp_path, model, mc_steps=K, mc_batch_size=batch, mc_mode="corrected", mc_accept_perplexity=threshold
    )
    assert info["mc_rejected"] == drawn - K > 0
    with pytest.raises(RHNError, match=r"only 0 of \d+ MC samples had perplexity < 1.0"):
        evaluate_mc(text, tmp_path, model, mc_steps=1, mc_accept_perplexity=1.0)


@effect_of("mc_mode")
def test_mc_mode_decides_the_word_mask_and_the_scored_positions(text, tmp_path, model, monkeypatch):
    from rhn_core.backends import torch_rhn

    modes = {}
    for mode in ("faithful", "corrected"):
        calls = spy_class(monkeypatch, torch_rhn.Backend, "target_log_probs")
        info = evaluate_mc(text, tmp_path, model, mc_steps=1, mc_mode=mode, drop_x=0.5, full_eval_num_steps=10)
        word = np.concatenate([args[4].x[0] for args, _ in calls])  # the single sample's word mask over the stream
        modes[mode] = (word, info["mc_test_perplexity"])
        monkeypatch.undo()
    faithful, corrected = modes["faithful"][0], modes["corrected"][0]
    assert len(np.unique(faithful)) == 1  # faithful: one scalar for the whole stream
    assert set(np.unique(corrected)) == {0.0, 2.0}  # corrected: per position
    assert len(faithful) == len(corrected) == 44


# --- the torch backend's fast paths ------------------------------------------------
@effect_of("rhn_impl")
def test_rhn_impl_picks_the_micro_step_kernels(text, tmp_path):
    pytest.importorskip("triton")
    import torch

    auto = trainer(text, tmp_path / "auto", rhn_impl="auto").backend  # float64: oneDNN has no float64 products
    assert type(auto.model.rhn.steps).__name__ == ("TritonSteps" if auto.device.type == "cuda" else "TorchSteps")
    assert type(trainer(text, tmp_path / "ref", rhn_impl="reference").backend.model.rhn.steps).__name__ == "TorchSteps"
    small = trainer(text, tmp_path / "small", rhn_impl="auto", dtype="float32", device="cpu").backend
    assert type(small.model.rhn.steps).__name__ == "TorchSteps"  # H 8: oneDNN's per-call cost would dominate
    big = trainer(text, tmp_path / "big", rhn_impl="auto", dtype="float32", device="cpu", hidden_size=512).backend
    assert type(big.model.rhn.steps).__name__ == "OneDNNSteps"
    # rhn_impl=onednn at any size: every product in oneDNN, the reference gradients to float32 rounding
    t = trainer(text, tmp_path / "onednn", rhn_impl="onednn", dtype="float32", device="cpu")
    assert type(t.backend.model.rhn.steps).__name__ == "OneDNNSteps"
    x, y = oracle.minibatches(t.corpus.train, B, T)[0]
    params = t.backend.get_params()
    _, got = t.backend.gradients(x, y, None, t.backend.zero_state(B))
    expected = reference.gradients(
        params, t.spec, x, y, oracle.zero_state(t.spec, B), weight_decay=t.cfg["weight_decay"]
    )
    for n in expected:  # every gradient, to float32 rounding
        scale = np.abs(expected[n]).max()
        assert scale > 1e-6, n  # not a zero gradient
        np.testing.assert_allclose(got[n], expected[n], rtol=1e-3, atol=1e-4 * scale, err_msg=n)
    with pytest.raises(RHNError, match="rhn_impl=onednn runs float32 models on CPU"):
        trainer(text, tmp_path, rhn_impl="onednn")  # float64
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels need CUDA or the interpreter")
    t = trainer(text, tmp_path, rhn_impl="triton", device="cuda" if torch.cuda.is_available() else "cpu")
    assert type(t.backend.model.rhn.steps).__name__ == "TritonSteps"
    before, after, grads = first_step(t)  # the fused kernels' step is the reference step
    expected = oracle.sgd_step(before, grads(t.cfg["weight_decay"]), 0.5, t.cfg["max_grad_norm"])
    for n in expected:
        np.testing.assert_allclose(after[n], expected[n], rtol=0, atol=1e-12, err_msg=n)
    with pytest.raises(RHNError, match="rhn_impl='fused': use one of auto, reference, onednn, triton"):
        trainer(text, tmp_path, rhn_impl="fused")


@effect_of("cuda_graphs")
def test_cuda_graphs_capture_the_steps_on_cuda_only(text, tmp_path):
    import torch

    on, off = (trainer(text, tmp_path / str(c), device="auto", cuda_graphs=c).backend for c in (True, False))
    assert off.step_mode == "eager"
    assert on.step_mode == ("graph" if torch.cuda.is_available() else "eager")  # CPU: nothing to capture
    if torch.cuda.is_available():  # captured and eager steps agree exactly
        results = [first_step(trainer(text, tmp_path, device="cuda", cuda_graphs=c))[1] for c in (True, False)]
        for n in results[0]:
            np.testing.assert_array_equal(results[0][n], results[1][n], err_msg=n)
    with pytest.raises(RHNError, match="cuda_graphs='yes': use True or False"):
        trainer(text, tmp_path, cuda_graphs="yes")


@effect_of("precision")
def test_precision_rounds_the_products(text, tmp_path, monkeypatch):
    from rhn_core.backends import cpu_bf16  # on CPU bf16 needs bfloat16 instructions: numbers are the same without

    monkeypatch.setattr(cpu_bf16, "has_bf16_products", lambda: True)
    steps = {
        p: first_step(trainer(text, tmp_path / p, dtype="float32", precision=p, max_grad_norm=1e6, weight_decay=0.0))
        for p in ("float32", "bf16")
    }
    before, exact, grads = steps["float32"]
    expected = oracle.sgd_step(before, grads(0.0), 0.5, 1e6)
    worst = {p: max(np.abs(steps[p][1][n] - expected[n]).max() for n in expected) for p in steps}
    assert worst["float32"] < 1e-6 and 1e-5 < worst["bf16"] < 2e-2, worst  # bf16 keeps 8 bits of mantissa
    with pytest.raises(RHNError, match="precision=tf32 applies to float32 models: use dtype=float32"):
        trainer(text, tmp_path, dtype="float64", precision="tf32")
    with pytest.raises(RHNError, match="precision='fp8': use one of float32, tf32, bf16"):
        trainer(text, tmp_path, precision="fp8")


# --- data parallel (training on several processes or devices: tests/test_distributed.py) -----
@effect_of("replicas")
def test_replicas_split_the_global_batch_over_tf_devices(text, tmp_path):
    # The equality of 2 replicas and 1 needs a fresh TensorFlow with 2 logical devices:
    # tests/test_distributed.py::test_tf_two_replicas_train_exactly_as_one. Here: the split is checked first.
    with pytest.raises(RHNError, match=r"batch_size=3 does not split evenly over 2 replicas"):
        loop.Trainer(config(text, tmp_path, replicas=2), "tf", FakeRun())
    with pytest.raises(
        RHNError, match=r"replicas=2 is not supported by the torch backend: .*torchrun --nproc_per_node"
    ):
        trainer(text, tmp_path, batch_size=4, replicas=2)


@effect_of("dist_timeout")
def test_dist_timeout_bounds_the_wait_for_the_other_ranks(text, tmp_path, monkeypatch):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # rank 0 of 2 whose rank 1 never comes: it gives up after dist_timeout, with a one-line error
    for key, value in dict(
        RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    ).items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    with pytest.raises(RHNError, match=r"rank 0 of 2 could not join the others within 3 s"):
        trainer(text, tmp_path, batch_size=4, dist_timeout=3)
    assert 3 <= time.monotonic() - start < 60


# --- sampling and threads ---------------------------------------------------------------------
def reference_sample(params, spec, prime, length, temperature, seed):
    """Ids drawn as the sample command draws them, from the NumPy reference's log-probabilities."""
    rng, ids = np.random.default_rng(seed), []
    log_probs, state, _ = reference.forward(params, spec, np.array([prime]), oracle.zero_state(spec, 1))
    for _ in range(length):
        z = log_probs[0, -1] / temperature
        p = np.exp(z - z.max())
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
        log_probs, state, _ = reference.forward(params, spec, np.array([[ids[-1]]]), state)
    return ids


@effect_of("sample_length", "sample_prime", "temperature")
@pytest.mark.parametrize("length, prime, temperature", [(12, "Alice", 1.0), (5, "", 0.5), (9, "the ", 3.0)])
def test_sample_keys_set_the_prime_length_and_temperature_of_the_draws(
    text, data, tmp_path, model, length, prime, temperature
):
    run = FakeRun()
    cfg = config(text, tmp_path, load_model=model, sample_length=length, sample_prime=prime, temperature=temperature)
    written = sample.sample(cfg, "torch", run)
    t = trainer(text, tmp_path)
    params, _ = load_checkpoint(model)
    values = sorted(set(data))
    prime_ids = [values.index(b) for b in (prime.encode() or b"\n")]
    ids = reference_sample(params, t.spec, prime_ids, length, temperature, seed=1)
    assert written == run.info["sample"] == prime + bytes(values[i] for i in ids).decode()


@effect_of("sample_at_end")
def test_sample_at_end_prints_a_sample_of_the_best_model(text, tmp_path, capsys):
    for at_end in (False, True):
        run = run_experiment(
            "main",
            ["tiny"],
            dataset="chars",
            data_path=text,
            batch_size=B,
            num_steps=T,
            hidden_size=8,
            dtype="float64",
            max_max_epoch=1,
            sample_at_end=at_end,
            sample_length=20,
            save_dir=str(tmp_path / str(at_end)),
        )  # two runs, two folders
        out = capsys.readouterr().out
        assert ("sample" in run.info) == at_end and ("Sample (20 chars" in out) == at_end
        if at_end:  # the best epoch's weights write it: the sample command on best.npz gives the same text
            again = sample.sample(
                config(
                    text,
                    tmp_path,
                    load_model=str(tmp_path / "True" / "best.npz"),
                    sample_length=20,
                    seed=run.config["seed"],
                ),
                "torch",
                FakeRun(),
            )
            assert run.info["sample"] == again


@effect_of("threads")
def test_threads_sets_the_frameworks_cpu_threads(text, tmp_path, monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert trainer(text, tmp_path, threads=1).backend.threads == torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # 0: the environment's choice
        assert trainer(text, tmp_path, threads=0).backend.threads == torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")  # 0 and no OMP_NUM_THREADS: the cores this process may use
        assert trainer(text, tmp_path, threads=0).backend.threads == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)
