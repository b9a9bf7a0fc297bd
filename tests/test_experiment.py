"""The Sacred experiment end to end: configs, smoke runs, checkpoints, resume, evaluate."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import REPO, run_cli, run_experiment  # noqa: E402
from rhn_core import loop  # noqa: E402
from rhn_core.checkpoint import load_checkpoint  # noqa: E402
from rhn_core.errors import TrainingInterrupted  # noqa: E402


@pytest.mark.parametrize(
    "named, expected",
    [
        (
            "ptb_sota",
            dict(
                dataset="ptb",
                depth=10,
                hidden_size=830,
                tied=True,
                vocab_size=10000,
                init_bias=-2.0,
                drop_i=0.75,
                num_steps=35,
                batch_size=20,
                max_epoch=20,
                lr_decay=1.02,
                max_max_epoch=500,
            ),
        ),
        (
            "enwik8_sota",
            dict(
                dataset="enwik8",
                depth=10,
                hidden_size=1500,
                tied=False,
                vocab_size=205,
                init_bias=-4.0,
                drop_x=0.1,
                drop_i=0.4,
                drop_h=0.1,
                drop_o=0.4,
                num_steps=50,
                batch_size=128,
                max_epoch=5,
                lr_decay=1.03,
            ),
        ),
        ("text8_sota", dict(dataset="text8", vocab_size=27, hidden_size=1500, depth=10, tied=False, batch_size=128)),
        ("demo", dict(dataset="chars", vocab_size=0, tied=False, learning_rate=0.5)),
        ("tiny", dict(hidden_size=16, depth=2, dataset="ptb")),
    ],
)
def test_named_configs_have_the_original_values(named, expected):
    config = run_experiment("print_config", [named]).config
    original = dict(
        init_scale=0.04,
        learning_rate=0.2,
        weight_decay=1e-7,
        max_grad_norm=10,
        num_layers=1,
        device="auto",
        dtype="float32",
        resume="",
    )
    for key, value in {**original, **expected}.items():
        assert config[key] == value, key


def test_print_config_on_the_command_line_documents_every_key():
    result = run_cli("print_config", "with", "ptb_sota")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hidden_size = 830" in out and "depth = 10" in out
    assert "# D: recurrence depth" in out  # the key comments are shown


def smoke_data(named, synthetic_ptb, synthetic_char_dirs):
    return {
        "ptb_sota": dict(data_path=synthetic_ptb),
        None: dict(data_path=synthetic_ptb),
        "enwik8_sota": dict(data_path=synthetic_char_dirs, num_test_symbols=400),
        "text8_sota": dict(data_path=synthetic_char_dirs, num_test_symbols=400),
        "demo": dict(batch_size=64, num_steps=20),
    }[named]


@pytest.mark.slow
@pytest.mark.parametrize("named", [None, "ptb_sota", "enwik8_sota", "text8_sota", "demo"])
def test_every_named_config_runs_at_tiny_size(named, synthetic_ptb, synthetic_char_dirs, tmp_path):
    names = ([named] if named else []) + ["tiny"]
    run = run_experiment(
        named=names, save_dir=str(tmp_path), seed=3, **smoke_data(named, synthetic_ptb, synthetic_char_dirs)
    )
    info = run.info
    assert np.isfinite(run.result) and run.result == info["best_valid_perplexity"]
    assert len(info["logs"]["valid_perplexity"]) == 3 and info["logs"]["valid_perplexity"][0] == np.inf
    for key in ("nr_parameters", "epoch_nr", "best_val_epoch", "full_best_valid_perplexity", "full_test_perplexity"):
        assert key in info, key
    assert (tmp_path / "best.npz").is_file() and (tmp_path / "last.npz").is_file()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_metrics_are_logged_per_epoch(small_text, tmp_path):
    logged = []

    class Recorder:
        def log_scalar(self, name, value, step):
            logged.append((name, step, value))

        def add_artifact(self, path, name):
            self.artifacts.append((name, path))

        info, observers, artifacts = {}, [], []

    cfg = run_experiment(
        "print_config",
        ["tiny"],
        dataset="chars",
        data_path=small_text,
        batch_size=16,
        num_steps=10,
        save_dir=str(tmp_path),
        seed=1,
    ).config
    result = loop.Trainer(dict(cfg), "torch", Recorder()).train()
    names = {n for n, _, _ in logged}
    assert {
        "train_perplexity",
        "valid_perplexity",
        "test_perplexity",
        "train_bits",
        "valid_bits",
        "test_bits",
        "learning_rate",
        "chars_per_second",
        "epoch_seconds",
    } <= names
    steps = sorted(s for n, s, _ in logged if n == "valid_perplexity")
    assert steps == [1, 2]
    valid = {s: v for n, s, v in logged if n == "valid_perplexity"}
    assert result == min(valid.values())
    # checkpoints are handed to the observers as they are written (no plot without an observer)
    names = [n for n, _ in Recorder.artifacts]
    assert (
        names[:2] == ["best.npz", "last.npz"]
        and names.count("last.npz") == 2
        and set(names) == {"best.npz", "last.npz"}
    )
    assert all(os.path.dirname(p) == str(tmp_path) for _, p in Recorder.artifacts)
    lrs = {s: v for n, s, v in logged if n == "learning_rate"}
    assert lrs == {1: 0.2, 2: pytest.approx(0.2 / 1.02)}  # tiny: max_epoch 1, base lr_decay 1.02


def char_run(small_text, tmp_path, **updates):
    base = dict(
        dataset="chars",
        data_path=small_text,
        batch_size=16,
        num_steps=10,
        dtype="float64",
        save_dir=str(tmp_path),
        seed=11,
    )
    return run_experiment(named=["tiny"], **{**base, **updates})


def test_full_evaluation_equals_the_t1_pass(small_text, tmp_path):
    run = char_run(small_text, tmp_path, max_max_epoch=1)
    cfg = dict(run.config)
    corpus, spec = loop.corpus_and_spec(cfg)
    params, _ = load_checkpoint(str(tmp_path / "best.npz"))
    results = []
    for window in (1, 7, 1000):
        cfg["full_eval_num_steps"] = window
        backend = loop.make_backend(cfg, "torch", spec, params)
        results.append(loop.Evaluator(cfg, backend, corpus).full("valid"))
    assert results[0] == pytest.approx(results[1], rel=1e-12) == pytest.approx(results[2], rel=1e-12)
    assert run.info["full_best_valid_perplexity"] == pytest.approx(results[0], rel=1e-12)


def test_evaluate_scores_a_checkpoint_like_the_training_run(small_text, tmp_path):
    run = char_run(small_text, tmp_path)
    result = run_experiment(
        "evaluate",
        ["tiny"],
        dataset="chars",
        data_path=small_text,
        batch_size=16,
        num_steps=10,
        dtype="float64",
        load_model=str(tmp_path / "best.npz"),
    ).result
    best = run.info["best_val_epoch"]
    assert result["valid_perplexity"] == pytest.approx(run.info["logs"]["valid_perplexity"][best], rel=1e-12)
    assert result["full_valid_perplexity"] == pytest.approx(run.info["full_best_valid_perplexity"], rel=1e-12)
    assert result["full_test_perplexity"] == pytest.approx(run.info["full_test_perplexity"], rel=1e-12)


@pytest.mark.parametrize("stop_at", [90, 69], ids=["mid-training-epoch-2", "during-validation-epoch-1"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(small_text, tmp_path, monkeypatch, stop_at):
    # 67 training steps + 3 + 3 evaluation batches per epoch: the stop lands where the id says.
    straight = tmp_path / "straight"
    full = char_run(small_text, straight)
    calls = {"n": 0}
    original = loop.InterruptFlag.check

    def check(self):
        calls["n"] += 1
        if calls["n"] == stop_at:
            self.requested = True  # what the SIGINT handler does
        original(self)

    monkeypatch.setattr(loop.InterruptFlag, "check", check)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match="resume="):
        char_run(small_text, interrupted)
    _, state = load_checkpoint(str(interrupted / "last.npz"))
    assert int(state["step"]) > 0 and int(state["epoch"]) == (2 if stop_at == 90 else 1)
    monkeypatch.setattr(loop.InterruptFlag, "check", original)
    # resumed into another folder: best.npz comes along for the final pass
    resumed = char_run(small_text, tmp_path, save_dir=str(tmp_path / "elsewhere"), resume=str(interrupted / "last.npz"))
    a, _ = load_checkpoint(str(straight / "last.npz"))
    b, _ = load_checkpoint(str(tmp_path / "elsewhere" / "last.npz"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for key in ("full_best_valid_perplexity", "full_test_perplexity", "best_val_epoch"):
        assert resumed.info[key] == pytest.approx(full.info[key], rel=1e-12), key
    np.testing.assert_allclose(
        resumed.info["logs"]["train_perplexity"], full.info["logs"]["train_perplexity"], rtol=1e-12
    )


def test_ctrl_c_on_the_command_line_saves_a_resumable_checkpoint(small_text, tmp_path):
    cmd = [
        sys.executable,
        "-u",
        "-W",
        "ignore",
        os.path.join(REPO, "rhn_train_torch.py"),
        "with",
        "tiny",
        "dataset=chars",
        f"data_path={small_text}",
        "max_max_epoch=50",
        f"save_dir={tmp_path}",
        "progress=False",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("Epoch: 1 Learning rate"):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert "TrainingInterrupted: stopped in epoch" in err and f"resume={tmp_path}" in err
    _, state = load_checkpoint(str(tmp_path / "last.npz"))
    assert int(state["epoch"]) >= 1


@pytest.mark.slow
def test_stacked_layers_work_with_the_character_in_size_rule(small_text, tmp_path):
    run = char_run(small_text, tmp_path, num_layers=2, hidden_size=80, tied=False, max_max_epoch=1)  # V < H: V x V
    params, _ = load_checkpoint(str(tmp_path / "best.npz"))
    v = params["embedding"].shape[0]
    assert params["embedding"].shape == (v, v) and params["RHN1/h_0/Matrix"].shape == (160, 80)
    assert np.isfinite(run.result)
