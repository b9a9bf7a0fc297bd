"""The NumPy reference: a case worked out by hand, and its gradients by finite differences."""

import math

import numpy as np
import pytest

from rhn_core import reference
from rhn_core.masks import Masks, sample_masks
from rhn_core.params import ModelSpec, init_params


def golden_params():
    """V = 2, H = 1, D = 2, tied: every number below can be followed with a pencil."""
    return {
        "embedding": np.array([[1.0], [-1.0]]),
        "RHN0/h_0/Matrix": np.array([[1.0], [0.5]]),
        "RHN0/h_0/Bias": np.array([0.0]),
        "RHN0/t_0/Matrix": np.array([[0.0], [0.0]]),
        "RHN0/t_0/Bias": np.array([0.0]),
        "RHN0/h_1/Matrix": np.array([[2.0]]),
        "RHN0/h_1/Bias": np.array([-1.0]),
        "RHN0/t_1/Matrix": np.array([[0.0]]),
        "RHN0/t_1/Bias": np.array([math.log(3.0)]),
        "softmax_b": np.array([0.0, 0.5]),
    }


def test_golden_two_steps_by_hand():
    spec = ModelSpec(vocab_size=2, hidden_size=1, depth=2, tied=True)
    x, y = np.array([[0, 1]]), np.array([[1, 1]])
    log_probs, final, _ = reference.forward(golden_params(), spec, x, [np.zeros((1, 1))])
    # t = 0: micro-layer 0 sees x = E[0] = 1, s = 0: h = tanh(1), t = 1/2
    s = 0.5 * math.tanh(1.0)
    # micro-layer 1: h = tanh(2 s - 1), t = sigmoid(log 3) = 3/4
    s = s + 0.75 * (math.tanh(2 * s - 1) - s)
    y0 = s
    # t = 1: x = E[1] = -1
    s = s + 0.5 * (math.tanh(-1.0 + 0.5 * s) - s)
    s = s + 0.75 * (math.tanh(2 * s - 1) - s)
    y1 = s

    def log_softmax(o):  # logits = o * E^T + b = [o, -o + 0.5]
        z = np.array([o, -o + 0.5])
        return z - math.log(math.exp(z[0]) + math.exp(z[1]))

    expected = np.stack([log_softmax(y0), log_softmax(y1)])
    np.testing.assert_allclose(log_probs[0], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(final[0], [[y1]], rtol=0, atol=1e-15)
    c = reference.loss(log_probs, y)
    assert c == pytest.approx(-(expected[0, 1] + expected[1, 1]), abs=1e-15)
    j, c2, _ = reference.objective(golden_params(), spec, x, y, [np.zeros((1, 1))], weight_decay=0.1)
    sum_sq = sum(float((p**2).sum()) for p in golden_params().values())
    assert j == pytest.approx(c + 0.05 * sum_sq, abs=1e-14) and c2 == c


def test_loss_is_sum_over_time_of_batch_mean():
    lp = np.log(np.full((2, 3, 4), 0.25))
    assert reference.loss(lp, np.zeros((2, 3), int)) == pytest.approx(3 * math.log(4))


@pytest.mark.parametrize(
    "tied, layers, T, masked",
    [(False, 2, 4, True), (True, 1, 4, True), (False, 1, 1, False)],
    ids=["untied-2layers", "tied", "T1-no-masks-no-decay"],
)
def test_gradients_match_finite_differences(tied, layers, T, masked):
    # the last case leaves masks and weight_decay at their defaults (none) and has one time step
    spec = ModelSpec(
        vocab_size=9,
        hidden_size=9 if tied else 5,
        depth=3,
        num_layers=layers,
        tied=tied,
        init_scale=0.6,
        init_bias=-1.0,
    )
    rng = np.random.default_rng(0)
    params = init_params(spec, rng)
    x, y = rng.integers(0, 9, (3, T)), rng.integers(0, 9, (3, T))
    state = [0.3 * rng.normal(size=(3, spec.hidden_size)) for _ in range(layers)]
    extra = (sample_masks(rng, x, spec, 0.3, 0.3, 0.3, 0.3), 0.05) if masked else ()
    grads = reference.gradients(params, spec, x, y, state, *extra)
    for name in params:
        direction = rng.normal(size=params[name].shape)
        eps = 1e-5
        plus = reference.objective({**params, name: params[name] + eps * direction}, spec, x, y, state, *extra)[0]
        minus = reference.objective({**params, name: params[name] - eps * direction}, spec, x, y, state, *extra)[0]
        numeric = (plus - minus) / (2 * eps)
        analytic = float((grads[name] * direction).sum())
        assert abs(analytic) > 1e-4, name  # informative: the check could fail
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9), name


def test_masks_enter_where_the_spec_says():
    spec = ModelSpec(vocab_size=4, hidden_size=3, depth=2, tied=True, init_scale=0.5)
    params = init_params(spec, np.random.default_rng(0))
    x = np.array([[1, 2]])
    zero = [np.zeros((1, 3))]
    base, _, _ = reference.forward(params, spec, x, zero)
    ones = Masks(np.ones((1, 2)), (np.ones((1, 3)),), (np.ones((1, 3)),), np.ones((1, 3)))
    np.testing.assert_allclose(reference.forward(params, spec, x, zero, ones)[0], base, atol=1e-15)
    # output mask of zeros: logits are the softmax bias only
    dropped_o = Masks(None, None, None, np.zeros((1, 3)))
    lp = reference.forward(params, spec, x, zero, dropped_o)[0]
    b = params["softmax_b"]
    np.testing.assert_allclose(lp[0, 0], b - np.log(np.exp(b).sum()), atol=1e-15)


def test_clipped_sgd_step():
    params = {"a": np.array([1.0, 1.0]), "b": np.array([0.0])}
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}  # global norm 5
    stepped = reference.clipped_sgd_step(params, grads, lr=0.1, max_grad_norm=2.5)  # scale 1/2
    np.testing.assert_allclose(stepped["a"], [1.0 - 0.15, 1.0])
    np.testing.assert_allclose(stepped["b"], [-0.2])
    unclipped = reference.clipped_sgd_step(params, grads, lr=0.1, max_grad_norm=10)
    np.testing.assert_allclose(unclipped["b"], [-0.4])


def masked_golden_params():
    """As golden_params, with T matrices that read their inputs, so the T masks matter."""
    return {
        **golden_params(),
        "RHN0/t_0/Matrix": np.array([[0.4], [-0.6]]),
        "RHN0/t_0/Bias": np.array([0.1]),
        "RHN0/t_1/Matrix": np.array([[0.3]]),
    }


@pytest.mark.parametrize("separate", [False, True], ids=["tied_noise", "separate_masks"])
def test_masks_worked_out_by_hand(separate):
    """Every mask (word, input, state for H and for T, output) enters where the equations say."""
    spec = ModelSpec(vocab_size=2, hidden_size=1, depth=2, tied=True)
    x, s0 = np.array([[0, 1]]), 0.2
    mx, mo = [2.0, 0.5], 3.0
    mi_h, mi_t, mh_h, mh_t = (3.0, 0.0, 0.5, 4.0) if separate else (3.0, 3.0, 0.5, 0.5)
    masks = Masks(
        np.array([mx]),
        (np.array([[mi_h, mi_t]] if separate else [[mi_h]]),),
        (np.array([[mh_h, mh_t]] if separate else [[mh_h]]),),
        np.array([[mo]]),
    )
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))
    s, expected = s0, []
    for t, e in enumerate((1.0, -1.0)):  # E[0] = 1, E[1] = -1
        e = e * mx[t]
        # micro-layer 0: H reads [e * m_i,H, s * m_h,H] with rows (1, 0.5); T reads (0.4, -0.6), bias 0.1
        h, g = math.tanh(e * mi_h * 1.0 + s * mh_h * 0.5), sig(e * mi_t * 0.4 - s * mh_t * 0.6 + 0.1)
        s = s + g * (h - s)
        # micro-layer 1: H = tanh(2 s m_h,H - 1), T = sigmoid(0.3 s m_h,T + log 3); the carry is undropped
        h, g = math.tanh(2.0 * s * mh_h - 1.0), sig(0.3 * s * mh_t + math.log(3.0))
        s = s + g * (h - s)
        o = s * mo
        z = np.array([o, -o + 0.5])  # logits = o E^T + b
        expected.append(z - math.log(np.exp(z).sum()))
    log_probs, final, _ = reference.forward(masked_golden_params(), spec, x, [np.array([[s0]])], masks)
    np.testing.assert_allclose(log_probs[0], np.array(expected), rtol=0, atol=1e-15)
    np.testing.assert_allclose(final[0], [[s]], rtol=0, atol=1e-15)
    plain = reference.forward(masked_golden_params(), spec, x, [np.array([[s0]])])[0]
    assert np.abs(plain - log_probs).min() > 1e-3  # every output depends on the masks


def test_log_probs_stay_finite_and_exact_for_logits_in_the_thousands():
    # logits above 1000 whose row maxima lie more than 800 apart: exp() overflows beyond 709, and
    # underflows to 0 below -745, so shifting by anything but each row's own maximum gives inf or log(0)
    spec = ModelSpec(vocab_size=6, hidden_size=4, depth=2, tied=False, init_scale=1.0, init_bias=0.0)
    rng = np.random.default_rng(3)
    params = {**init_params(spec, rng), "softmax_w": 3000.0 * rng.normal(size=(4, 6))}
    x = rng.integers(0, 6, (4, 3))
    log_probs, _, cache = reference.forward(params, spec, x, [np.zeros((4, 4))])
    logits = cache["o"] @ params["softmax_w"] + params["softmax_b"]
    assert logits.max() > 1000 and np.ptp(logits.max(axis=-1)) > 800  # the case is as hard as said
    assert np.isfinite(log_probs).all()
    np.testing.assert_allclose(
        log_probs, logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True), rtol=1e-12, atol=1e-9
    )
