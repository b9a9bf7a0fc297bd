"""The training loop against an independent NumPy trace (``oracle.py``: the batching written
out, the reference forward/backward, SGD with clipping and weight decay): several minibatches
with the hidden state carried and reset per epoch, dropout masks, the learning-rate schedule,
the batched and full evaluation passes and their scale, bits, best-epoch selection."""

import math

import numpy as np
import pytest

pytest.importorskip("torch")

import oracle  # noqa: E402
from rhn_core import loop  # noqa: E402
from rhn_core.checkpoint import load_checkpoint  # noqa: E402
from rhn_core.hyperparams import resolve_config  # noqa: E402
from rhn_core.masks import sample_masks  # noqa: E402
from test_config_keys import FakeRun  # noqa: E402

# 900 characters: 53 training minibatches of B x T = 3 x 5 per epoch (rows of 270: the last full
# window would need a target in column 270), 2 of valid and of test (rows of 15).
N_CHARS, B, T = 900, 3, 5
DROPS = dict(drop_x=0.2, drop_i=0.3, drop_h=0.2, drop_o=0.3)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return oracle.write_text(tmp_path_factory.mktemp("loop") / "text.txt", N_CHARS)


def copy_rng(rng):
    twin = np.random.default_rng()
    twin.bit_generator.state = rng.bit_generator.state
    return twin


@pytest.mark.parametrize(
    "shape",
    [dict(num_layers=1, tied=False, tied_noise=True), dict(num_layers=2, tied=True, tied_noise=False)],
    ids=["1layer", "2layers"],
)
def test_training_run_follows_the_numpy_trace(text, tmp_path, shape, capsys):
    cfg = resolve_config(
        "tiny",
        dataset="chars",
        data_path=text,
        batch_size=B,
        num_steps=T,
        hidden_size=8,
        depth=2,
        init_scale=0.3,
        learning_rate=0.5,
        lr_decay=2.0,
        max_epoch=1,
        max_max_epoch=2,
        max_grad_norm=1.0,
        weight_decay=0.01,
        dtype="float64",
        device="cpu",
        seed=5,
        progress=False,
        save_dir=str(tmp_path),
        **DROPS,
        **shape,
    )
    run = FakeRun()
    trainer = loop.Trainer(cfg, "torch", run)
    spec, start, mask_rng = trainer.spec, trainer.backend.get_params(), copy_rng(trainer.rng)
    train, valid, test = oracle.char_splits(open(text, "rb").read())

    def masks_of(rng):
        return lambda x: sample_masks(rng, x, spec, **DROPS, tied_noise=shape["tied_noise"])

    expected, params, snapshots = {"train": [], "valid": [], "test": []}, start, []
    for lr in (0.5, 0.25):  # lr / lr_decay^max(epoch - max_epoch, 0)
        params, objectives = oracle.training_epoch(params, spec, train, B, T, lr, 0.01, 1.0, masks_of(mask_rng))
        assert len(objectives) == 53
        expected["train"].append(math.exp(sum(objectives) / (len(objectives) * T)))  # J per token, as the original
        expected["valid"].append(oracle.batched_perplexity(params, spec, valid, B, T))
        expected["test"].append(oracle.batched_perplexity(params, spec, test, B, T))
        snapshots.append(params)

    result = trainer.train()

    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "Learning rate" in line] == [
        "Epoch: 1 Learning rate: 0.500",
        "Epoch: 2 Learning rate: 0.250",
    ]  # once at the start of each epoch
    # the logged speed is the epoch's 53 x B x T characters over its seconds
    seconds = [v for n, _, v in run.scalars if n == "epoch_seconds"]
    speeds = [v for n, _, v in run.scalars if n == "chars_per_second"]
    np.testing.assert_allclose(np.multiply(seconds, speeds), [53 * B * T] * 2, rtol=1e-12)
    logs = run.info["logs"]
    for split in ("train", "valid", "test"):
        np.testing.assert_allclose(logs[f"{split}_perplexity"][1:], expected[split], rtol=1e-10, err_msg=split)
        bits = [v for n, _, v in run.scalars if n == f"{split}_bits"]
        np.testing.assert_allclose(bits, np.log2(expected[split]), rtol=1e-10, err_msg=split)
    last, _ = load_checkpoint(str(tmp_path / "last.npz"))
    for n in params:
        np.testing.assert_allclose(last[n], params[n], rtol=0, atol=1e-10, err_msg=n)
    best = int(np.argmin(expected["valid"]))
    assert run.info["best_val_epoch"] == best + 1 and result == pytest.approx(min(expected["valid"]), rel=1e-10)
    best_params, _ = load_checkpoint(str(tmp_path / "best.npz"))
    for n in params:
        np.testing.assert_allclose(best_params[n], snapshots[best][n], rtol=0, atol=1e-10, err_msg=n)
    assert run.info["full_best_valid_perplexity"] == pytest.approx(
        oracle.full_perplexity(snapshots[best], spec, valid), rel=1e-10
    )
    assert run.info["full_test_perplexity"] == pytest.approx(
        oracle.full_perplexity(snapshots[best], spec, test), rel=1e-10
    )

    # The comparison can fail: dropping the carried state changes the first epoch far beyond the tolerance.
    reset, _ = oracle.training_epoch(
        start, spec, train, B, T, 0.5, 0.01, 1.0, masks_of(copy_rng(np.random.default_rng(0))), carry=False
    )
    carried, _ = oracle.training_epoch(
        start, spec, train, B, T, 0.5, 0.01, 1.0, masks_of(copy_rng(np.random.default_rng(0)))
    )
    assert max(np.abs(reset[n] - carried[n]).max() for n in start) > 1e-4


def test_evaluation_scale_and_bits_on_a_checkpoint(text, tmp_path):
    """Batched and full perplexities of a model are exp(mean NLL per token), whatever B is."""
    cfg = resolve_config(
        "tiny",
        dataset="chars",
        data_path=text,
        batch_size=B,
        num_steps=T,
        hidden_size=8,
        depth=2,
        init_scale=0.5,
        dtype="float64",
        device="cpu",
        seed=2,
        progress=False,
        save_dir=str(tmp_path),
    )
    trainer = loop.Trainer(cfg, "torch", FakeRun())
    params, spec = trainer.backend.get_params(), trainer.spec
    _, valid, _ = oracle.char_splits(open(text, "rb").read())
    for batch_size in (1, 3, 4):
        ev = loop.Evaluator({**cfg, "batch_size": batch_size}, trainer.backend, trainer.corpus)
        assert ev.batched("valid") == pytest.approx(
            oracle.batched_perplexity(params, spec, valid, batch_size, T), rel=1e-12
        )
    assert trainer.evaluator.full("valid") == pytest.approx(oracle.full_perplexity(params, spec, valid), rel=1e-12)
