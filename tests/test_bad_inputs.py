"""Bad input: one clear line that says what to do, no traceback, nothing half-written."""

import lzma
import os

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import assert_one_line_error, run_cli, run_experiment  # noqa: E402
from rhn_core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from rhn_core.errors import RHNError  # noqa: E402


def test_missing_ptb_directory_on_the_command_line(tmp_path):
    result = run_cli("with", "ptb_sota", f"data_path={tmp_path}/nowhere")
    assert_one_line_error(result, "ptb.train.txt not found", "Mikolov", "data_path=")


def test_unknown_dataset_on_the_command_line():
    assert_one_line_error(run_cli("with", "dataset=wiki103"), "unknown dataset 'wiki103'", "ptb, enwik8, text8")


def test_checkpoint_of_another_config_lists_the_mismatches(small_text, tmp_path):
    run_experiment(
        named=["tiny"],
        dataset="chars",
        data_path=small_text,
        batch_size=16,
        num_steps=10,
        max_max_epoch=1,
        save_dir=str(tmp_path),
    )
    result = run_cli(
        "evaluate",
        "with",
        "tiny",
        "dataset=chars",
        f"data_path={small_text}",
        "batch_size=16",
        "num_steps=10",
        "hidden_size=20",
        f"load_model={tmp_path}/best.npz",
    )
    assert_one_line_error(result, "does not match the config", "RHN0/h_0/Matrix is (32, 16), config needs (40, 20)")


def expect_error(match, **updates):
    with pytest.raises(RHNError, match=match):
        run_experiment(named=["tiny"], **updates)


def test_empty_file(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(" a b \n" if split != "train" else "")
    expect_error(r"ptb.train.txt is empty", data_path=str(tmp_path))


def test_truncated_compressed_file(tmp_path, synthetic_ptb):
    for split in ("valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_bytes(open(os.path.join(synthetic_ptb, f"ptb.{split}.txt"), "rb").read())
    whole = lzma.compress(open(os.path.join(synthetic_ptb, "ptb.train.txt"), "rb").read())
    (tmp_path / "ptb.train.txt.xz").write_bytes(whole[: len(whole) // 2])
    expect_error(r"cannot read .*ptb.train.txt.xz: truncated or corrupt", data_path=str(tmp_path))


def test_truncated_plain_ptb_is_caught_by_its_vocabulary(tmp_path, synthetic_ptb):
    for split in ("train", "valid", "test"):
        text = open(os.path.join(synthetic_ptb, f"ptb.{split}.txt")).read()
        (tmp_path / f"ptb.{split}.txt").write_text(text[: len(text) // 3] if split == "train" else text)
    expect_error(r"distinct words but vocab_size=10000: the file is truncated", data_path=str(tmp_path))


@pytest.mark.parametrize(
    "updates, match",
    [
        (dict(depth=0), r"depth=0 must be a positive integer"),
        (dict(drop_i=1.0), r"drop_i=1.0 is a drop probability"),
        (dict(learning_rate=-1.0), r"learning_rate=-1.0 must be a positive number"),
        (dict(dtype="float16"), r"dtype='float16'"),
        (dict(device="tpu"), r"cannot start on device='tpu'"),
        (dict(vocab_size=0), r"vocab_size=0 must be positive"),
        (dict(init_other_bias="zero"), r"init_other_bias='zero': use 'uniform' or a number"),
    ],
)
def test_config_values_that_cannot_work(updates, match, synthetic_ptb):
    expect_error(match, data_path=synthetic_ptb, **updates)


def test_data_too_short_for_the_batch_shape(small_text):
    expect_error(
        r"valid split has 600 tokens, too short for batch_size=20 x num_steps=35",
        dataset="chars",
        data_path=small_text,
        batch_size=20,
        num_steps=35,
    )


def test_char_data_with_the_wrong_number_of_symbols(synthetic_char_dirs, tmp_path):
    # an enwik8-like file (205 byte values) where text8 (27 characters) is expected
    (tmp_path / "text8").write_bytes(open(os.path.join(synthetic_char_dirs, "enwik8"), "rb").read())
    expect_error(
        r"205 distinct chars but vocab_size=27: the file is truncated or not the expected corpus",
        dataset="text8",
        data_path=str(tmp_path),
        num_test_symbols=400,
    )


def test_evaluate_without_a_checkpoint(small_text):
    with pytest.raises(RHNError, match="evaluate needs load_model=PATH"):
        run_experiment("evaluate", ["tiny"], dataset="chars", data_path=small_text)
    with pytest.raises(RHNError, match="checkpoint '/no/such.npz' not found"):
        run_experiment("evaluate", ["tiny"], dataset="chars", data_path=small_text, load_model="/no/such.npz")


def test_corrupt_checkpoint(small_text, tmp_path):
    bad = tmp_path / "best.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RHNError, match="cannot read checkpoint .*best.npz: not a complete .npz"):
        run_experiment("evaluate", ["tiny"], dataset="chars", data_path=small_text, load_model=str(bad))


def test_resume_from_a_best_checkpoint_is_refused(small_text, tmp_path):
    run_experiment(
        named=["tiny"],
        dataset="chars",
        data_path=small_text,
        batch_size=16,
        num_steps=10,
        max_max_epoch=1,
        save_dir=str(tmp_path),
    )
    expect_error(
        r"has no training state \(a best.npz\?\): resume from the run's last.npz",
        dataset="chars",
        data_path=small_text,
        batch_size=16,
        num_steps=10,
        resume=str(tmp_path / "best.npz"),
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_text, tmp_path, monkeypatch):
    base = dict(dataset="chars", data_path=small_text, batch_size=16, num_steps=10, save_dir=str(tmp_path))
    # A learning rate no model survives: the loss overflows in the first epoch.
    expect_error(
        r"training loss became (nan|inf) in epoch 1 .*no checkpoint was written yet", learning_rate=1e30, **base
    )
    assert not (tmp_path / "last.npz").exists()

    # A loss that goes bad in epoch 2: epoch 1's last.npz stays as it was.
    from rhn_core.backends import torch_rhn

    original = torch_rhn.Backend.train_step
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        objective, state = original(self, *args, **kwargs)
        return (objective * float("nan") if calls["n"] > 70 else objective), state

    monkeypatch.setattr(torch_rhn.Backend, "train_step", poisoned)
    expect_error(r"training loss became nan in epoch 2 .*the last good checkpoint is .*last.npz", **base)
    params, state = load_checkpoint(str(tmp_path / "last.npz"))
    assert int(state["epoch"]) == 2 and int(state["step"]) == 0
    assert all(np.all(np.isfinite(a)) for a in params.values())


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    save_checkpoint(str(path), {"a": np.ones(3)}, {"epoch": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        save_checkpoint(str(path), {"a": np.zeros(3)}, {"epoch": 2})
    params, state = load_checkpoint(str(path))  # the old checkpoint is intact, no temp file left
    assert params["a"].tolist() == [1, 1, 1] and int(state["epoch"]) == 1
    assert os.listdir(tmp_path) == ["last.npz"]


def test_resume_inside_an_epoch_needs_the_same_batch_shape(small_text, tmp_path, monkeypatch):
    from rhn_core import runtime
    from rhn_core.errors import TrainingInterrupted

    def stop(self):
        raise runtime.Stop

    monkeypatch.setattr(runtime.InterruptFlag, "check", stop)  # stops after the first step
    base = dict(dataset="chars", data_path=small_text, batch_size=16, num_steps=10, save_dir=str(tmp_path))
    with pytest.raises(TrainingInterrupted):
        run_experiment(named=["tiny"], **base)
    expect_error(
        r"stopped inside an epoch with batch_size=16, num_steps=10: resume with those values",
        **{**base, "batch_size": 8},
        resume=str(tmp_path / "last.npz"),
    )
