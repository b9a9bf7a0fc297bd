"""Equivalence checks of the torch backend's fast paths, as plain functions.

Used by ``tests/test_kernels.py`` (pytest, CPU: Triton's interpreter; CUDA where present)
and by ``benchmarks/gpu_check.py`` (a GPU machine with only torch, triton and NumPy: no
pytest, no Sacred, no TensorFlow). Each check raises AssertionError on a mismatch.

The oracle is the float64 NumPy reference (``rhn_core.reference``): log-probabilities,
final states, the loss and the gradient of every parameter, and the parameters after a
clipped SGD step, on tiny models whose sizes do not fill a kernel tile.
"""

import numpy as np

from rhn_core import reference
from rhn_core.masks import NO_MASKS, sample_masks
from rhn_core.params import ModelSpec, init_params

WD = 0.01

CASES = {  # spec, mask kind: odd sizes (H=7 < a 16/32 tile), several column tiles (H=40), 2 layers
    "shared_masks": (
        ModelSpec(vocab_size=11, hidden_size=7, depth=3, num_layers=2, tied=False, init_scale=0.5, init_bias=-1.0),
        "shared",
    ),
    "separate_masks": (
        ModelSpec(vocab_size=11, hidden_size=7, depth=2, num_layers=2, tied=False, init_scale=0.5, init_bias=-1.0),
        "separate",
    ),
    "no_masks": (
        ModelSpec(vocab_size=9, hidden_size=7, depth=3, num_layers=1, tied=True, init_scale=0.5, init_bias=-1.0),
        "none",
    ),
    "multi_tile": (
        ModelSpec(vocab_size=50, hidden_size=40, depth=2, num_layers=1, tied=True, init_scale=0.25, init_bias=-1.0),
        "shared",
    ),
}

TOLERANCES = {  # (outputs and states, gradients): float64 to rounding; float32 to its own precision
    "float64": dict(out=1e-12, grad=1e-10, rtol=0.0),
    "float32": dict(out=2e-5, grad=2e-4, rtol=1e-3),
}


def make_case(case, device, dtype, impl, seed=0, B=3, T=4, **backend_options):
    from rhn_core.backends.torch_rhn import Backend

    spec, mask_kind = CASES[case]
    rng = np.random.default_rng(seed)
    params = init_params(spec, rng)
    x, y = rng.integers(0, spec.vocab_size, (B, T)), rng.integers(0, spec.vocab_size, (B, T))
    state = [0.5 * rng.normal(size=(B, spec.hidden_size)) for _ in range(spec.num_layers)]
    masks = (
        NO_MASKS
        if mask_kind == "none"
        else sample_masks(rng, x, spec, 0.3, 0.3, 0.3, 0.3, tied_noise=mask_kind == "shared")
    )
    backend = Backend(
        spec,
        params,
        weight_decay=WD,
        max_grad_norm=1.0,
        device=device,
        dtype=dtype,
        options=dict(backend_options, rhn_impl=impl),
    )
    assert (
        type(backend.model.rhn.steps).__name__
        == {"triton": "TritonSteps", "reference": "TorchSteps", "onednn": "OneDNNSteps"}[impl]
    )
    return spec, params, x, y, state, masks, backend


def check_forward(case, device, dtype="float64", impl="triton"):
    """Log-probabilities and final states against the oracle."""
    spec, params, x, y, state, masks, backend = make_case(case, device, dtype, impl)
    tol = TOLERANCES[dtype]
    ref_lp, ref_final, _ = reference.forward(params, spec, x, state, masks)
    assert ref_lp.std() > 0.05  # logits large enough for the comparison to mean something
    lp, final = backend.log_probs(x, backend.state_from_numpy(state), masks)
    np.testing.assert_allclose(lp, ref_lp, rtol=tol["rtol"], atol=tol["out"])
    np.testing.assert_allclose(np.stack(final), np.stack(ref_final), rtol=tol["rtol"], atol=tol["out"])


def check_gradients(case, device, dtype="float64", impl="triton"):
    """The objective and the gradient of every parameter against the oracle."""
    spec, params, x, y, state, masks, backend = make_case(case, device, dtype, impl, seed=1)
    tol = TOLERANCES[dtype]
    objective, grads = backend.gradients(x, y, masks, backend.state_from_numpy(state))
    j = reference.objective(params, spec, x, y, state, masks, WD)[0]
    assert abs(objective - j) <= tol["out"] + tol["rtol"] * abs(j), (objective, j)
    ref = reference.gradients(params, spec, x, y, state, masks, WD)
    assert set(grads) == set(ref)
    for n in ref:
        assert np.abs(ref[n]).max() > 1e-3, n
        np.testing.assert_allclose(grads[n], ref[n], rtol=tol["rtol"], atol=tol["grad"], err_msg=n)


def check_train_step(case, device, dtype="float64", impl="triton", **backend_options):
    """One clipped SGD step with weight decay: objective, new state and every parameter."""
    spec, params, x, y, state, masks, backend = make_case(case, device, dtype, impl, seed=2, **backend_options)
    tol = TOLERANCES[dtype]
    expected = reference.clipped_sgd_step(params, reference.gradients(params, spec, x, y, state, masks, WD), 0.7, 1.0)
    objective, new_state = backend.train_step(x, y, masks, backend.state_from_numpy(state), lr=0.7)
    j, _, ref_final = reference.objective(params, spec, x, y, state, masks, WD)
    got = backend.get_params()
    for n in expected:
        assert np.abs(expected[n] - params[n]).max() > 1e-4, n  # the step moved every parameter
        np.testing.assert_allclose(got[n], expected[n], rtol=tol["rtol"], atol=tol["out"], err_msg=n)
    assert abs(float(backend.to_numpy([objective])[0]) - j) <= tol["out"] + tol["rtol"] * abs(j)
    np.testing.assert_allclose(
        np.stack(backend.state_to_numpy(new_state)), np.stack(ref_final), rtol=tol["rtol"], atol=tol["out"]
    )


def static_step_trace(device, dtype, impl, step_mode, steps=4):
    """Losses, final state and parameters of a few training steps (masks on and off, two batch
    shapes, so several static steps are built) and evaluation steps, with ``step_mode``."""
    spec, params, _, _, _, _, backend = make_case("separate_masks", device, dtype, impl, seed=3)
    backend.step_mode = step_mode
    rng = np.random.default_rng(4)
    data = rng.integers(0, spec.vocab_size, (3, 5 * steps + 1))
    state = backend.zero_state(3)
    losses = []
    for i in range(steps):
        x, y = data[:, 5 * i : 5 * i + 5], data[:, 5 * i + 1 : 5 * i + 6]
        masks = sample_masks(rng, x, spec, 0.2, 0.3, 0.2, 0.3, tied_noise=False) if i % 2 else NO_MASKS
        objective, state = backend.train_step(x, y, masks, state, lr=0.5 / (i + 1))
        losses.append(objective)
        loss, _ = backend.eval_step(x, y, state)
        losses.append(loss)
    x = data[:2, :3]  # another shape: a step of its own
    losses.append(backend.train_step(x, data[:2, 1:4], NO_MASKS, backend.zero_state(2), lr=0.1)[0])
    return backend.to_numpy(losses), np.stack(backend.state_to_numpy(state)), backend.get_params()


def check_static_steps_match_eager(device, dtype="float64", impl="reference", step_mode="static"):
    """The static-buffer (``static``) or CUDA-graph (``graph``) steps give the eager numbers exactly."""
    eager = static_step_trace(device, dtype, impl, "eager")
    fast = static_step_trace(device, dtype, impl, step_mode)
    assert np.ptp(eager[0]) > 0.01  # the trace moves
    np.testing.assert_array_equal(fast[0], eager[0])
    np.testing.assert_array_equal(fast[1], eager[1])
    for n in eager[2]:
        np.testing.assert_array_equal(fast[2][n], eager[2][n], err_msg=n)
