"""Variational dropout masks: shapes, scaling, sharing, word tying, reproducibility."""

import numpy as np
import pytest

from rhn_core.masks import sample_masks, sampler, tie_repeated_tokens
from rhn_core.params import ModelSpec

SPEC = ModelSpec(vocab_size=6, hidden_size=8, depth=2, num_layers=2, tied=False)  # in_size 6


def test_shapes_values_and_layers():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, (5, 7))
    m = sample_masks(rng, x, SPEC, 0.25, 0.5, 0.2, 0.75)
    assert m.x.shape == (5, 7) and m.o.shape == (5, 8)
    assert [a.shape for a in m.i] == [(5, 6), (5, 8)]  # in_size for layer 0, H above
    assert [a.shape for a in m.h] == [(5, 8), (5, 8)]
    for mask, drop in ((m.x, 0.25), (m.i[1], 0.5), (m.h[0], 0.2), (m.o, 0.75)):
        assert set(np.unique(mask)) <= {0.0, 1.0 / (1.0 - drop)}


def test_zero_drop_gives_no_mask():
    m = sample_masks(np.random.default_rng(0), np.zeros((2, 3), int), SPEC, 0.0, 0.0, 0.0, 0.0)
    assert m == (None, None, None, None)


def test_inverted_scaling_keeps_the_mean():
    m = sample_masks(np.random.default_rng(1), np.zeros((400, 2), int), SPEC, 0.0, 0.75, 0.25, 0.4)
    for mask in (m.i[0], m.h[1], m.o):
        assert abs(mask.mean() - 1.0) < 0.05


def test_repeated_tokens_share_the_first_occurrences_mask():
    x = np.array([[3, 1, 3, 2, 1, 3], [1, 1, 1, 0, 0, 5]])
    mask = np.arange(12, dtype=float).reshape(2, 6)
    np.testing.assert_array_equal(tie_repeated_tokens(mask, x), [[0, 1, 0, 3, 1, 0], [6, 6, 6, 9, 9, 11]])


def test_word_mask_is_tied_in_sampled_masks():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, (50, 20))
    mx = sample_masks(rng, x, SPEC, 0.5, 0.0, 0.0, 0.0).x
    for b in range(50):
        for token in np.unique(x[b]):
            assert len(np.unique(mx[b][x[b] == token])) == 1
    assert 0.3 < (mx == 0).mean() < 0.7  # but still about half the tokens are dropped


def test_same_seed_same_masks():
    x = np.arange(12).reshape(3, 4) % 5
    a = sample_masks(np.random.default_rng(7), x, SPEC, 0.3, 0.3, 0.3, 0.3)
    b = sample_masks(np.random.default_rng(7), x, SPEC, 0.3, 0.3, 0.3, 0.3)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.h[1], b.h[1])


@pytest.mark.parametrize("tied_noise", [True, False])
def test_the_config_sampler_draws_what_the_documented_order_gives(tied_noise):
    """sampler(cfg) against draws made here: x, i per layer, h per layer, o from one generator,
    1/keep where rng.random() < keep; with tied_noise=False, i and h are [for H | for T]."""
    cfg = dict(drop_x=0.25, drop_i=0.5, drop_h=0.2, drop_o=0.75, tied_noise=tied_noise)
    x = np.array([[3, 1, 3, 2, 1, 3, 0], [1, 1, 1, 0, 0, 5, 4]])
    got = sampler(cfg, SPEC)(np.random.default_rng(3), x)
    rng, wide = np.random.default_rng(3), 1 if tied_noise else 2

    def draw(shape, drop):
        return np.where(rng.random(shape) < 1 - drop, 1 / (1 - drop), 0.0)

    word = draw((2, 7), 0.25)
    for b in range(2):  # later occurrences of a token take the first one's value
        for t in range(7):
            word[b, t] = word[b, list(x[b]).index(x[b, t])]
    expected = {
        "x": word,
        "i0": draw((2, wide * 6), 0.5),
        "i1": draw((2, wide * 8), 0.5),
        "h0": draw((2, wide * 8), 0.2),
        "h1": draw((2, wide * 8), 0.2),
        "o": draw((2, 8), 0.75),
    }
    actual = {"x": got.x, "i0": got.i[0], "i1": got.i[1], "h0": got.h[0], "h1": got.h[1], "o": got.o}
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    if not tied_noise:  # the H and T halves are different draws
        assert not np.array_equal(got.h[0][:, :8], got.h[0][:, 8:])
