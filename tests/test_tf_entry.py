"""The TensorFlow entry point: same configs and commands, checkpoints shared with torch."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("torch")

from conftest import backend_params, run_cli, run_experiment  # noqa: E402
from rhn_core.checkpoint import load_checkpoint  # noqa: E402
from rhn_core.errors import TrainingInterrupted  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


@pytest.mark.parametrize("named", ["", "ptb_sota", "enwik8_sota", "text8_sota", "demo", "tiny"])
def test_both_entry_points_print_identical_configs(named):
    args = ["print_config", "with", named, "seed=7"] if named else ["print_config", "with", "seed=7"]
    torch_out, tf_out = (run_cli(*args, backend=b) for b in ("torch", "tf"))
    assert torch_out.returncode == tf_out.returncode == 0, torch_out.stderr + tf_out.stderr
    assert "hidden_size = " in torch_out.stdout
    assert torch_out.stdout == tf_out.stdout


@pytest.mark.parametrize("named", [None, "ptb_sota", "enwik8_sota", "text8_sota", "demo"])
def test_every_named_config_runs_at_tiny_size_with_tf(named, synthetic_ptb, synthetic_char_dirs, tmp_path):
    from test_experiment import smoke_data

    names = ([named] if named else []) + ["tiny"]
    run = run_experiment(
        named=names,
        backend="tf",
        save_dir=str(tmp_path),
        seed=3,
        **smoke_data(named, synthetic_ptb, synthetic_char_dirs),
    )
    assert np.isfinite(run.result) and np.isfinite(run.info["full_test_perplexity"])
    assert (tmp_path / "best.npz").is_file() and (tmp_path / "last.npz").is_file()


def char_updates(small_text, **more):
    return dict(dataset="chars", data_path=small_text, batch_size=16, num_steps=10, dtype="float64", seed=11, **more)


@pytest.mark.parametrize("writer, reader", [("torch", "tf"), ("tf", "torch")])
def test_checkpoints_cross_over(small_text, tmp_path, writer, reader):
    trained = run_experiment(named=["tiny"], backend=writer, **char_updates(small_text, save_dir=str(tmp_path)))
    # evaluate: the other backend scores the best weights exactly as the training run did
    result = run_experiment(
        "evaluate", ["tiny"], backend=reader, **char_updates(small_text, load_model=str(tmp_path / "best.npz"))
    ).result
    assert result["full_test_perplexity"] == pytest.approx(trained.info["full_test_perplexity"], rel=1e-10)
    assert result["full_valid_perplexity"] == pytest.approx(trained.info["full_best_valid_perplexity"], rel=1e-10)
    # resume: the other backend continues the run for a third epoch
    resumed = run_experiment(
        named=["tiny"], backend=reader, **char_updates(small_text, max_max_epoch=3, resume=str(tmp_path / "last.npz"))
    )
    assert resumed.info["epoch_nr"] == 3 and len(resumed.info["logs"]["valid_perplexity"]) == 4
    _, state = load_checkpoint(str(tmp_path / "last.npz"))
    assert int(state["epoch"]) == 4 and str(state["backend"]) == reader


def test_resume_across_backends_matches_a_single_backend_run(small_text, tmp_path):
    """Two epochs in torch then one in TF end with the weights of three epochs in torch (float64)."""
    straight = run_experiment(
        named=["tiny"], **char_updates(small_text, max_max_epoch=3, save_dir=str(tmp_path / "straight"))
    )
    run_experiment(named=["tiny"], **char_updates(small_text, save_dir=str(tmp_path / "mixed")))
    mixed = run_experiment(
        named=["tiny"],
        backend="tf",
        **char_updates(small_text, max_max_epoch=3, resume=str(tmp_path / "mixed" / "last.npz")),
    )
    a, _ = load_checkpoint(str(tmp_path / "straight" / "last.npz"))
    b, _ = load_checkpoint(str(tmp_path / "mixed" / "last.npz"))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-9, err_msg=name)
    assert mixed.info["full_test_perplexity"] == pytest.approx(straight.info["full_test_perplexity"], rel=1e-9)


@pytest.mark.parametrize("backend", backend_params())
def test_options_of_the_other_implementations_run(small_text, tmp_path, backend):
    run = run_experiment(
        named=["tiny"],
        backend=backend,
        **char_updates(small_text, save_dir=str(tmp_path), tied_noise=False, init_other_bias=0, drop_i=0.3, drop_h=0.3),
    )
    assert np.isfinite(run.result)
    assert run.config["tied_noise"] is False and run.config["init_other_bias"] == 0


def test_resume_inside_an_epoch_from_tf_in_torch_with_dropout(tmp_path, monkeypatch):
    """Stopped inside epoch 2 by TF (dropout on, separate H/T masks, the carried state saved),
    finished by torch: the numbers of an uninterrupted torch run (float64). (torch -> TF: TF's
    step from a given state is checked against the reference in test_backends.)"""
    import oracle
    from rhn_core import loop

    text = oracle.write_text(tmp_path / "text.txt", 3000)  # B = 8: 33 training steps per epoch, 1 + 1 evaluation
    updates = {**char_updates(text, tied_noise=False, drop_x=0.2, drop_i=0.3, drop_h=0.3, drop_o=0.3), "batch_size": 8}
    straight = run_experiment(named=["tiny"], **updates, save_dir=str(tmp_path / "straight"))
    calls, original = {"n": 0}, loop.InterruptFlag.check

    def check(self):
        calls["n"] += 1
        if calls["n"] == 35 + 8:  # epoch 1: 33 steps + 2 evaluation batches; then 8 steps into epoch 2
            self.requested = True
        original(self)

    monkeypatch.setattr(loop.InterruptFlag, "check", check)
    with pytest.raises(TrainingInterrupted):
        run_experiment(named=["tiny"], backend="tf", **updates, save_dir=str(tmp_path / "mixed"))
    monkeypatch.setattr(loop.InterruptFlag, "check", original)
    _, state = load_checkpoint(str(tmp_path / "mixed" / "last.npz"))
    assert (int(state["epoch"]), int(state["step"])) == (2, 8) and np.abs(state["hidden"]).max() > 0.01
    mixed = run_experiment(named=["tiny"], **updates, resume=str(tmp_path / "mixed" / "last.npz"))
    a, _ = load_checkpoint(str(tmp_path / "straight" / "last.npz"))
    b, _ = load_checkpoint(str(tmp_path / "mixed" / "last.npz"))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-9, err_msg=name)
    for key in ("train_perplexity", "valid_perplexity", "test_perplexity"):
        np.testing.assert_allclose(mixed.info["logs"][key], straight.info["logs"][key], rtol=1e-9, err_msg=key)
    assert mixed.info["full_test_perplexity"] == pytest.approx(straight.info["full_test_perplexity"], rel=1e-9)
