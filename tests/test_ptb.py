"""A short real run on the real Penn Treebank (skipped cleanly where the files are absent)."""

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import run_experiment  # noqa: E402
from rhn_core import loop  # noqa: E402
from rhn_core.params import init_params  # noqa: E402

pytestmark = [pytest.mark.slow]


def test_one_epoch_on_real_ptb_lowers_validation_perplexity(ptb_dir, tmp_path):
    updates = dict(
        data_path=ptb_dir,
        hidden_size=32,
        depth=2,
        batch_size=64,
        num_steps=35,
        max_max_epoch=1,
        save_dir=str(tmp_path),
        seed=5,
    )
    run = run_experiment(named=["ptb_sota"], **updates)
    cfg = dict(run.config)
    corpus, spec = loop.corpus_and_spec(cfg)
    untrained = loop.make_backend(cfg, "torch", spec, init_params(spec, np.random.default_rng(0)))
    untrained_valid = loop.Evaluator(cfg, untrained, corpus).batched("valid")
    assert 9000 < untrained_valid < 11000  # about uniform over the 10,000 words
    info = run.info
    assert info["nr_parameters"] == 10000 * 32 + 2 * (64 * 32 + 32) + 2 * (32 * 32 + 32) + 10000
    assert info["best_valid_perplexity"] < untrained_valid / 5
    # the final B = 1 pass scores all 73,759 predictions; batched covers 73,500 of them
    assert info["full_best_valid_perplexity"] == pytest.approx(info["best_valid_perplexity"], rel=0.05)
