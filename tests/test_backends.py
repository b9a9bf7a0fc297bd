"""Every backend against the float64 NumPy reference and against each other; the
reusable RHN modules on their own."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

from rhn_core import reference
from rhn_core.backends import BACKENDS
from rhn_core.masks import Masks, sample_masks
from rhn_core.params import ModelSpec, fuse, init_params

WD = 0.01

SPECS = {  # word-like (V >= H, tied or not), character-like (V < H: V x V embedding), stacked
    "tied": ModelSpec(vocab_size=13, hidden_size=7, depth=3, num_layers=1, tied=True, init_scale=0.5, init_bias=-1.0),
    "untied_2layers": ModelSpec(
        vocab_size=13, hidden_size=7, depth=2, num_layers=2, tied=False, init_scale=0.5, init_bias=-1.0
    ),
    "char_2layers": ModelSpec(
        vocab_size=5, hidden_size=8, depth=3, num_layers=2, tied=False, init_scale=0.5, init_bias=-2.0
    ),
    # the options of the other original implementations: separate H/T masks, constant other biases
    "separate_masks": ModelSpec(
        vocab_size=5,
        hidden_size=8,
        depth=3,
        num_layers=2,
        tied=False,
        init_scale=0.5,
        init_bias=-2.0,
        init_other_bias=0.1,
    ),
}


def tied_noise(spec):
    return spec.init_other_bias == "uniform"  # the options travel together in these cases


def backend_module(name):
    pytest.importorskip(BACKENDS[name].framework)
    return importlib.import_module(BACKENDS[name].module)


def cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Every backend on CPU; the torch backend on CUDA too where one is present (with its defaults
# there: fused kernels and CUDA graphs).
ON_CUDA = [
    pytest.param(
        "torch-cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]
    )
]
FLOAT64_ONLY = {"numpy"}  # the reference itself: no float32 to check


def backend_class(request):
    name, _, device = request.param.partition("-")
    cls = backend_module(name).Backend
    return (lambda *args, **kwargs: cls(*args, **{**kwargs, "device": device})) if device else cls


@pytest.fixture(params=sorted(BACKENDS) + ON_CUDA)
def Backend(request):
    return backend_class(request)


@pytest.fixture(params=sorted(set(BACKENDS) - FLOAT64_ONLY) + ON_CUDA)
def Backend32(request):
    """The backends that also compute in float32."""
    return backend_class(request)


def setup_case(Backend, spec, seed=0, B=3, T=5, dtype="float64", drops=(0.3, 0.3, 0.3, 0.3)):
    rng = np.random.default_rng(seed)
    params = init_params(spec, rng)
    x, y = rng.integers(0, spec.vocab_size, (B, T)), rng.integers(0, spec.vocab_size, (B, T))
    state = [0.5 * rng.normal(size=(B, spec.hidden_size)) for _ in range(spec.num_layers)]
    masks = sample_masks(rng, x, spec, *drops, tied_noise=tied_noise(spec))
    backend = Backend(spec, params, weight_decay=WD, max_grad_norm=1.0, device="cpu", dtype=dtype)
    return params, x, y, state, masks, backend


@pytest.mark.parametrize("name", SPECS)
def test_log_probs_and_final_state(Backend, name):
    spec = SPECS[name]
    params, x, y, state, masks, backend = setup_case(Backend, spec)
    ref_lp, ref_final, _ = reference.forward(params, spec, x, state, masks)
    assert ref_lp.std() > 0.05  # logits large enough for the comparison to mean something
    lp, final = backend.log_probs(x, backend.state_from_numpy(state), masks)
    np.testing.assert_allclose(lp, ref_lp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.stack(final), np.stack(ref_final), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SPECS)
def test_loss_and_gradients_of_every_parameter(Backend, name):
    spec = SPECS[name]
    params, x, y, state, masks, backend = setup_case(Backend, spec, seed=1)
    objective, grads = backend.gradients(x, y, masks, backend.state_from_numpy(state))
    assert objective == pytest.approx(reference.objective(params, spec, x, y, state, masks, WD)[0], abs=1e-11)
    ref = reference.gradients(params, spec, x, y, state, masks, WD)
    assert set(grads) == set(ref)
    for n in ref:
        assert np.abs(ref[n]).max() > 1e-3, n
        np.testing.assert_allclose(grads[n], ref[n], rtol=0, atol=1e-10, err_msg=n)


@pytest.mark.parametrize("max_grad_norm", [0.5, 1e6])  # clipping active, and not
@pytest.mark.parametrize("name", ["untied_2layers", "separate_masks"])
def test_one_clipped_sgd_step_with_weight_decay(Backend, max_grad_norm, name):
    spec = SPECS[name]
    params, x, y, state, masks, backend = setup_case(Backend, spec, seed=2)
    backend.max_grad_norm = max_grad_norm
    ref_grads = reference.gradients(params, spec, x, y, state, masks, WD)
    norm = np.sqrt(sum((g**2).sum() for g in ref_grads.values()))
    assert (norm > max_grad_norm) == (max_grad_norm == 0.5)
    objective, new_state = backend.train_step(x, y, masks, backend.state_from_numpy(state), lr=0.7)
    expected = reference.clipped_sgd_step(params, ref_grads, 0.7, max_grad_norm)
    got = backend.get_params()
    for n in expected:
        assert np.abs(expected[n] - params[n]).max() > 1e-4, n  # the step moved every parameter
        np.testing.assert_allclose(got[n], expected[n], rtol=0, atol=1e-12, err_msg=n)
    j, _, ref_final = reference.objective(params, spec, x, y, state, masks, WD)
    assert float(backend.to_numpy([objective])[0]) == pytest.approx(j, abs=1e-11)
    np.testing.assert_allclose(np.stack(backend.state_to_numpy(new_state)), np.stack(ref_final), atol=1e-12)


@pytest.mark.parametrize("name", ["char_2layers", "separate_masks"])
def test_multi_step_trace_with_dropout_and_carried_state(Backend, name):
    spec = SPECS[name]
    rng = np.random.default_rng(3)
    params = init_params(spec, rng)
    data = rng.integers(0, spec.vocab_size, (4, 31))
    backend = Backend(spec, params, weight_decay=WD, max_grad_norm=2.0, device="cpu", dtype="float64")
    state_ref = [np.zeros((4, spec.hidden_size))] * spec.num_layers
    state = backend.zero_state(4)
    trace, ref_trace = [], []
    for i in range(6):
        x, y = data[:, 5 * i : 5 * i + 5], data[:, 5 * i + 1 : 5 * i + 6]
        masks = sample_masks(rng, x, spec, 0.2, 0.3, 0.2, 0.3, tied_noise=tied_noise(spec))
        j, _, next_ref = reference.objective(params, spec, x, y, state_ref, masks, WD)
        params = reference.clipped_sgd_step(
            params, reference.gradients(params, spec, x, y, state_ref, masks, WD), 0.5, 2.0
        )
        state_ref = next_ref
        objective, state = backend.train_step(x, y, masks, state, lr=0.5)
        trace.append(objective)
        ref_trace.append(j)
    got = backend.to_numpy(trace)
    assert np.ptp(ref_trace) > 0.01
    np.testing.assert_allclose(got, ref_trace, rtol=0, atol=1e-10)
    final = backend.get_params()
    for n in params:
        np.testing.assert_allclose(final[n], params[n], rtol=0, atol=1e-10, err_msg=n)


def test_float32_short_check(Backend32):
    spec = SPECS["tied"]
    params, x, y, state, masks, backend = setup_case(Backend32, spec, seed=4, T=3, dtype="float32")
    objective, grads = backend.gradients(x, y, masks, backend.state_from_numpy(state))
    assert objective == pytest.approx(reference.objective(params, spec, x, y, state, masks, WD)[0], rel=1e-5)
    ref = reference.gradients(params, spec, x, y, state, masks, WD)
    for n in ref:
        np.testing.assert_allclose(grads[n], ref[n], rtol=1e-3, atol=1e-5, err_msg=n)
    assert backend.get_params()["embedding"].dtype == np.float32


def test_eval_step_is_the_loss_without_dropout(Backend):
    spec = SPECS["untied_2layers"]
    params, x, y, state, _, backend = setup_case(Backend, spec, seed=5)
    loss, final = backend.eval_step(x, y, backend.state_from_numpy(state))
    _, c, ref_final = reference.objective(params, spec, x, y, state)
    assert backend.to_numpy([loss])[0] == pytest.approx(c, abs=1e-12)
    np.testing.assert_allclose(np.stack(backend.state_to_numpy(final)), np.stack(ref_final), atol=1e-12)
    assert backend.get_params()["softmax_b"] == pytest.approx(params["softmax_b"])  # no update


def test_torch_rhn_module_on_its_own():
    torch = pytest.importorskip("torch")
    from rhn_core.backends.torch_rhn import RHN

    torch.manual_seed(0)
    rhn = RHN(input_size=6, hidden_size=10, depth=3, num_layers=2, init_scale=0.1, init_bias=-3.0)
    assert torch.all(rhn.b[1][:, 10:] == -3.0) and rhn.b[1][:, :10].abs().max() <= 0.1
    x = torch.randn(4, 9, 6)
    out, state = rhn(x)
    assert out.shape == (4, 9, 10) and state.shape == (2, 4, 10)
    assert torch.equal(out[:, -1], state[-1])
    # truncated BPTT: two chunks with the state carried = one long sequence
    first, mid = rhn(x[:, :4])
    second, end = rhn(x[:, 4:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), out)
    torch.testing.assert_close(end, state)
    # masks multiply the layer inputs and the recurrent state
    masks = [torch.ones(4, 6), torch.ones(4, 10)]
    torch.testing.assert_close(rhn(x, input_masks=masks, state_masks=[torch.ones(4, 10)] * 2)[0], out)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rhn.parameters())


def test_core_imports_no_framework():
    code = (
        "import sys, rhn_core, rhn_core.loop, rhn_core.experiment, rhn_core.reference, rhn_core.data.readers\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA device")]
        ),
    ],
)
@pytest.mark.parametrize("with_mask", [False, True, "separate"])
def test_torch_recurrence_gradcheck_including_the_initial_state(with_mask, device):
    torch = pytest.importorskip("torch")
    from rhn_core.backends.torch_kernels import make_steps
    from rhn_core.backends.torch_rhn import RHNRecurrence

    g = torch.Generator(device).manual_seed(0)
    f64 = dict(generator=g, dtype=torch.float64, device=device)
    B, T, H, D = 2, 3, 4, 3
    px = torch.randn(B, T, 2 * H, **f64, requires_grad=True)
    s0 = torch.randn(B, H, **f64, requires_grad=True)
    R = (0.7 * torch.randn(D, H, 2 * H, **f64)).requires_grad_()
    b = torch.randn(D, 2 * H, **f64, requires_grad=True)
    width = 2 * H if with_mask == "separate" else H
    mh = (torch.rand(B, width, **f64) > 0.3).double() / 0.7 if with_mask else None
    # the reference micro-steps everywhere; the fused kernels on CUDA (on CPU: test_kernels.py, interpreted)
    for impl in ("reference", "triton") if device == "cuda" else ("reference",):
        steps = make_steps(impl)
        assert torch.autograd.gradcheck(
            lambda *a, steps=steps: RHNRecurrence.apply(a[0], a[1], mh, a[2], a[3], steps), (px, s0, R, b)
        )


def test_tf_cell_inside_keras_rnn_and_the_fused_layer_agree():
    pytest.importorskip("tensorflow")
    import keras
    import tensorflow as tf
    from rhn_core.backends.tf_rhn import RHN, RHNCell

    keras.utils.set_random_seed(0)
    x = tf.random.normal([4, 9, 6], dtype=tf.float64)
    rnn = keras.layers.RNN(
        RHNCell(10, depth=3, init_scale=0.3, init_bias=-3.0, dtype="float64"),
        return_sequences=True,
        return_state=True,
        dtype="float64",
    )
    out, final = rnn(x)
    cell = rnn.cell
    assert np.all(cell.b.numpy()[:, 10:] == -3.0) and np.abs(cell.b.numpy()[:, :10]).max() <= 0.3
    # the stacked, hoisted layer with the same weights computes the same sequence
    stack = RHN(10, 3, num_layers=1, dtype="float64")
    stack.build((None, None, 6))
    for mine, theirs in zip(stack.cells[0].weights, cell.weights):
        mine.assign(theirs)
    out2, state2 = stack(x)
    np.testing.assert_allclose(out2.numpy(), out.numpy(), atol=1e-12)
    np.testing.assert_allclose(state2.numpy()[0], final.numpy(), atol=1e-12)
    first, mid = stack(x[:, :4])
    second, _ = stack(x[:, 4:], mid)  # truncated BPTT: the carried state continues the sequence
    np.testing.assert_allclose(np.concatenate([first, second], 1), out.numpy(), atol=1e-12)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(rnn(x)[0])
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in tape.gradient(loss, rnn.trainable_variables))


def test_torch_and_tf_agree_on_a_training_trace_with_dropout():
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    spec = SPECS["char_2layers"]
    rng = np.random.default_rng(9)
    params = init_params(spec, rng)
    backends = [backend_module(n).Backend(spec, params, WD, 2.0, "cpu", "float64") for n in ("torch", "tf")]
    states = [b.zero_state(4) for b in backends]
    data = rng.integers(0, spec.vocab_size, (4, 26))
    traces = [[], []]
    for i in range(5):
        x, y = data[:, 5 * i : 5 * i + 5], data[:, 5 * i + 1 : 5 * i + 6]
        masks = sample_masks(rng, x, spec, 0.2, 0.3, 0.2, 0.3)
        for j, b in enumerate(backends):
            objective, states[j] = b.train_step(x, y, masks, states[j], 0.5)
            traces[j].append(objective)
    np.testing.assert_allclose(backends[0].to_numpy(traces[0]), backends[1].to_numpy(traces[1]), rtol=0, atol=1e-10)
    a, b = (be.get_params() for be in backends)
    for n in a:
        np.testing.assert_allclose(a[n], b[n], rtol=0, atol=1e-10, err_msg=n)


def test_target_log_probs_with_masks_against_the_reference(Backend):
    """What the MC evaluation reads: log p(y) under dropout masks, and the state it leaves."""
    spec = SPECS["separate_masks"]  # 2 layers, separate H/T masks (shared ones: the log_probs test)
    params, x, y, state, masks, backend = setup_case(Backend, spec, seed=6)
    log_p, final = backend.target_log_probs(x, y, backend.state_from_numpy(state), masks)
    ref_lp, ref_final, _ = reference.forward(params, spec, x, state, masks)
    expected = np.take_along_axis(ref_lp, y[..., None], -1)[..., 0]
    np.testing.assert_allclose(log_p, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.stack(backend.state_to_numpy(final)), np.stack(ref_final), rtol=0, atol=1e-12)
    unmasked = np.take_along_axis(reference.forward(params, spec, x, state)[0], y[..., None], -1)[..., 0]
    assert np.abs(unmasked - expected).max() > 0.05  # the masks change the answer: the check can fail


def test_float32_training_steps_follow_the_float64_reference(Backend32):
    spec = SPECS["separate_masks"]  # the richest case: 2 layers, untied, separate masks; tied: the short check
    start, x, y, state, masks, backend = setup_case(Backend32, spec, seed=7, dtype="float32")
    params, ref_state, gpu_state = start, state, backend.state_from_numpy(state)
    for step in range(3):
        grads = reference.gradients(params, spec, x, y, ref_state, masks, WD)
        j, _, next_state = reference.objective(params, spec, x, y, ref_state, masks, WD)
        objective, gpu_state = backend.train_step(x, y, masks, gpu_state, lr=0.7)
        params, ref_state = reference.clipped_sgd_step(params, grads, 0.7, 1.0), next_state
        assert float(backend.to_numpy([objective])[0]) == pytest.approx(j, rel=2e-6), step
    got = backend.get_params()
    for n in params:
        assert got[n].dtype == np.float32, n
        assert np.abs(params[n] - start[n]).max() > 1e-3, n  # three steps moved it far beyond the tolerance
        np.testing.assert_allclose(got[n], params[n], rtol=0, atol=2e-5, err_msg=n)
    np.testing.assert_allclose(np.stack(backend.state_to_numpy(gpu_state)), np.stack(ref_state), rtol=0, atol=2e-5)


def rhn_stack_case(masks_kind, B=3, T=6):
    """A 2-layer stack with input width V < H (as the V x V character embedding), its canonical
    parameters, an input sequence (embedded ids), a state and non-trivial masks."""
    spec = ModelSpec(vocab_size=5, hidden_size=7, depth=3, num_layers=2, tied=False, init_scale=0.5, init_bias=-1.0)
    rng = np.random.default_rng(11)
    params = init_params(spec, rng)
    x = rng.integers(0, 5, (B, T))
    state = [0.5 * rng.normal(size=(B, 7)) for _ in range(2)]
    per_gate = 2 if masks_kind == "separate" else 1
    mi = tuple((rng.random((B, per_gate * n)) < 0.7) / 0.7 for n in spec.layer_input_sizes)
    mh = tuple((rng.random((B, per_gate * 7)) < 0.7) / 0.7 for _ in range(2))
    _, ref_final, cache = reference.forward(params, spec, x, state, Masks(None, mi, mh, None))
    assert np.abs(cache["o"] - reference.forward(params, spec, x, state)[2]["o"]).max() > 0.05  # masks matter
    return spec, params, params["embedding"][x], state, mi, mh, cache["o"], np.stack(ref_final)


@pytest.mark.parametrize("masks_kind", ["shared", "separate"])
def test_torch_rhn_module_masks_against_the_reference(masks_kind):
    torch = pytest.importorskip("torch")
    from rhn_core.backends.torch_rhn import RHN

    spec, params, inputs, state, mi, mh, ref_out, ref_final = rhn_stack_case(masks_kind)
    rhn = RHN(input_size=5, hidden_size=7, depth=3, num_layers=2).double()
    fused = fuse(params, spec)
    with torch.no_grad():
        for l in range(2):
            for p in "WRb":
                getattr(rhn, p)[l].copy_(torch.from_numpy(fused[f"{p}{l}"]))
    as_t = lambda arrays: [torch.from_numpy(a) for a in arrays]
    out, final = rhn(torch.from_numpy(inputs), torch.from_numpy(np.stack(state)), as_t(mi), as_t(mh))
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(final.detach().numpy(), ref_final, rtol=0, atol=1e-12)


@pytest.mark.parametrize("masks_kind", ["shared", "separate"])
def test_tf_rhn_layer_masks_against_the_reference(masks_kind):
    pytest.importorskip("tensorflow")
    import tensorflow as tf
    from rhn_core.backends.tf_rhn import RHN

    spec, params, inputs, state, mi, mh, ref_out, ref_final = rhn_stack_case(masks_kind)
    stack = RHN(7, 3, num_layers=2, dtype="float64")
    stack.build((None, None, 5))
    fused = fuse(params, spec)
    for l, cell in enumerate(stack.cells):
        for p in "WRb":
            getattr(cell, p).assign(fused[f"{p}{l}"])
    as_t = lambda arrays: [tf.constant(a) for a in arrays]
    out, final = stack(tf.constant(inputs), tf.constant(np.stack(state)), as_t(mi), as_t(mh))
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(final.numpy(), ref_final, rtol=0, atol=1e-12)


def test_tf_backend_places_the_model_on_the_device_asked_and_checks_its_parameters():
    tf_rhn = backend_module("tf")
    import tensorflow as tf
    from rhn_core.errors import RHNError

    assert [tf_rhn.pick_device(d) for d in ("cpu", "cuda", "cuda:1")] == ["/CPU:0", "/GPU:0", "/GPU:1"]
    spec = SPECS["tied"]
    params = init_params(spec, np.random.default_rng(0))
    backend = tf_rhn.Backend(spec, params, device="cpu")
    assert backend.device == "/CPU:0"
    with pytest.raises(
        RHNError,
        match=r"^parameters does not match the config .*: embedding is \(13, 6\), "
        r"config needs \(13, 7\)$",
    ):
        backend.set_params({**params, "embedding": params["embedding"][:, :6]})
    if not tf.config.list_logical_devices("GPU"):
        assert tf_rhn.Backend(spec, params, device="auto").device == "/CPU:0"
        with pytest.raises(RuntimeError, match="no GPU visible to TensorFlow"):
            tf_rhn.Backend(spec, params, device="cuda:0")


def test_tf_layers_start_from_the_papers_initialisation_and_rebuild_from_their_config():
    """Standalone (a Keras user's) layers: U(-init_scale, init_scale) weights and H biases, T biases =
    init_bias, zero embedding and softmax (the backends overwrite them with init_params' values)."""
    tf_rhn = backend_module("tf")
    spec = ModelSpec(
        vocab_size=13, hidden_size=7, depth=2, num_layers=2, tied=False, init_scale=0.04, init_bias=-1.0
    )  # init_bias not the layers' default
    model = tf_rhn.RHNLanguageModel(spec, dtype="float64")
    model.build()
    H = spec.hidden_size
    for name in ("embedding", "softmax_w", "softmax_b"):
        assert not getattr(model, name).numpy().any(), name
    for cell in model.rhn.cells:
        uniform = np.concatenate([cell.W.numpy().ravel(), cell.R.numpy().ravel(), cell.b.numpy()[:, :H].ravel()])
        assert 0.03 < np.abs(uniform).max() <= 0.04  # > 0.03 somewhere among ~300 draws, unless the range is wrong
        assert (cell.b.numpy()[:, H:] == -1.0).all()
    for layer, expected in (
        (
            tf_rhn.RHN(7, 3, num_layers=2, init_scale=0.5, init_bias=-1.5, name="stack"),
            dict(hidden_size=7, depth=3, num_layers=2),
        ),
        (tf_rhn.RHNCell(7, 3, init_scale=0.5, init_bias=-1.5, name="stack"), dict(units=7, depth=3)),
    ):
        copy = type(layer).from_config(layer.get_config())
        for key, value in {**expected, "init_scale": 0.5, "init_bias": -1.5, "name": "stack"}.items():
            assert getattr(copy, key) == value, key


def test_torch_and_numpy_backends_are_built_with_the_same_defaults():
    """The contract's keyword defaults are one set (a caller that leaves one out gets the same model).

    Read from constructed backends, not from the signatures (which a wrapper may hide)."""
    import inspect

    torch_backend = pytest.importorskip("rhn_core.backends.torch_rhn").Backend
    numpy_backend = importlib.import_module("rhn_core.backends.numpy_rhn").Backend

    def defaults(backend):
        return {n: p.default for n, p in inspect.signature(backend).parameters.items()}

    assert defaults(torch_backend) == defaults(numpy_backend)
    spec = ModelSpec(vocab_size=11, hidden_size=4, depth=2, num_layers=1)
    params = init_params(spec, np.random.default_rng(0))
    made = [b(spec, params, device="cpu", dtype="float64") for b in (torch_backend, numpy_backend)]
    assert [(b.weight_decay, b.max_grad_norm) for b in made] == [(0.0, 10.0)] * 2  # the original's max_grad_norm


def test_cpu_torch_backend_keeps_freed_memory_with_glibc(monkeypatch):
    """A CPU step reuses its large blocks: glibc is asked to keep them (rhn_core.backends.torch_rhn)."""
    import platform

    torch_rhn = pytest.importorskip("rhn_core.backends.torch_rhn")
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc's mallopt only")
    assert torch_rhn.keep_freed_memory() is True
    calls = []
    monkeypatch.setattr(torch_rhn, "keep_freed_memory", lambda: calls.append(1))
    spec = ModelSpec(vocab_size=11, hidden_size=4, depth=2, num_layers=1)
    torch_rhn.Backend(spec, init_params(spec, np.random.default_rng(0)), device="cpu", dtype="float64")
    assert calls == [1]
