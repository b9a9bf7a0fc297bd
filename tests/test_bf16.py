"""precision=bf16 on CPU (both backends): every product with bfloat16 inputs and float32
accumulation, everything else float32. Checked against the float64 oracle with tolerances
bfloat16 justifies (8 bits of mantissa: a product's relative error is about 2^-8), the dtypes
that must stay float32, checkpoints shared with float32 runs and the other backend, and the
refusal on a CPU without bfloat16 instructions (the capability check replaced)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import kernel_checks as checks  # noqa: E402
from rhn_core import reference  # noqa: E402
from rhn_core.backends import cpu_bf16, load_backend  # noqa: E402
from rhn_core.backends.torch_kernels import onednn, resolve_impl  # noqa: E402
from rhn_core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from rhn_core.errors import RHNError  # noqa: E402
from rhn_core.masks import NO_MASKS, sample_masks  # noqa: E402
from rhn_core.params import init_params  # noqa: E402

pytestmark = pytest.mark.skipif(not onednn.usable("cpu", torch.float32), reason="this PyTorch has no oneDNN")

# bf16 against float64, relative to the largest value of each array: a few roundings of 2^-9 that add
# up over the T x D micro-steps; an obviously wrong result (a gradient 10 % off, a product left out,
# a transposed weight) is far outside it, and float32 products are 100 times inside it (see below)
BF16_REL = 0.03


@pytest.fixture
def bf16_cpu(monkeypatch):
    """The tests' numbers do not depend on this CPU having the instructions (oneDNN emulates them)."""
    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda path="/proc/cpuinfo": {"avx512f", "avx512_bf16"})


def assert_bf16_close(got, expected, name, rel=BF16_REL):
    scale = np.abs(expected).max()
    assert scale > 1e-3, name
    err = np.abs(np.asarray(got, np.float64) - expected).max() / scale
    assert err <= rel, f"{name}: relative error {err:.2e} > {rel}"
    return err


def test_the_tolerance_rejects_wrong_results():
    """The comparison used below fails for a gradient 10 % off and passes the right one."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=(7, 14))
    assert_bf16_close(g.astype(np.float32), g, "right")
    with pytest.raises(AssertionError, match="relative error"):
        assert_bf16_close(1.1 * g, g, "10 % off")
    with pytest.raises(AssertionError, match="relative error"):
        assert_bf16_close(g[::-1], g, "rows swapped")


def bf16_case(case, seed, backend_name="torch", precision="bf16", **options):
    spec, mask_kind = checks.CASES[case]
    rng = np.random.default_rng(seed)
    params = init_params(spec, rng)
    B, T = 3, 4
    x, y = rng.integers(0, spec.vocab_size, (B, T)), rng.integers(0, spec.vocab_size, (B, T))
    state = [0.5 * rng.normal(size=(B, spec.hidden_size)) for _ in range(spec.num_layers)]
    masks = (
        NO_MASKS
        if mask_kind == "none"
        else sample_masks(rng, x, spec, 0.3, 0.3, 0.3, 0.3, tied_noise=mask_kind == "shared")
    )
    backend = load_backend(backend_name).Backend(
        spec,
        params,
        weight_decay=checks.WD,
        max_grad_norm=1.0,
        device="cpu",
        dtype="float32",
        threads=1,
        options=dict(options, precision=precision),
    )
    return spec, params, x, y, state, masks, backend


@pytest.mark.parametrize("case", sorted(checks.CASES))
def test_bf16_forward_and_gradients_against_the_oracle(case, bf16_cpu):
    spec, params, x, y, state, masks, backend = bf16_case(case, seed=1)
    assert type(backend.model.rhn.steps) is onednn.BF16Steps and not backend.autocast
    lp, final = backend.log_probs(x, backend.state_from_numpy(state), masks)
    ref_lp, ref_final, _ = reference.forward(params, spec, x, state, masks)
    assert lp.dtype == np.float32
    assert_bf16_close(lp, ref_lp, "log-probabilities")
    assert_bf16_close(np.stack(final), np.stack(ref_final), "final state")
    objective, grads = backend.gradients(x, y, masks, backend.state_from_numpy(state))
    j = reference.objective(params, spec, x, y, state, masks, checks.WD)[0]
    assert abs(objective - j) <= 0.01 * abs(j), (objective, j)
    ref = reference.gradients(params, spec, x, y, state, masks, checks.WD)
    errors = {n: assert_bf16_close(grads[n], ref[n], n) for n in ref}
    assert all(grads[n].dtype == np.float32 for n in grads)
    # the products really are bf16: a float32 step is far closer to the oracle than bf16's error
    assert max(errors.values()) > 1e-4, errors


def test_bf16_train_step_keeps_state_and_parameters_float32(bf16_cpu):
    spec, params, x, y, state, masks, backend = bf16_case("multi_tile", seed=2)
    expected = reference.clipped_sgd_step(
        params, reference.gradients(params, spec, x, y, state, masks, checks.WD), 0.7, 1.0
    )
    objective, new_state = backend.train_step(x, y, masks, backend.state_from_numpy(state), lr=0.7)
    assert objective.dtype == torch.float32 and new_state.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in backend.model.parameters())
    got = backend.get_params()
    for n in expected:
        step = expected[n] - params[n]
        assert_bf16_close(got[n] - params[n], step, n)  # the update itself, to bf16's precision
        # stored in float32: the update moved values by less than a bf16 spacing, and they are not bf16-rounded
        as_bf16 = torch.from_numpy(got[n]).bfloat16().float().numpy()
        assert (got[n] != as_bf16).mean() > 0.5, n
    j, _, ref_final = reference.objective(params, spec, x, y, state, masks, checks.WD)
    assert abs(float(backend.to_numpy([objective])[0]) - j) <= 0.01 * abs(j)
    assert_bf16_close(np.stack(backend.state_to_numpy(new_state)), np.stack(ref_final), "state")


def test_bf16_static_step_equals_eager(bf16_cpu, monkeypatch):
    """The static-buffer step (what CUDA graphs record) runs the bf16 products unchanged."""
    monkeypatch.setattr(checks, "make_case", lambda case, device, dtype, impl, seed=0: bf16_case(case, seed))
    checks.check_static_steps_match_eager("cpu", "float32", "onednn", step_mode="static")


def test_bf16_checkpoint_loads_in_float32_runs_of_both_backends(bf16_cpu, tmp_path):
    pytest.importorskip("tensorflow")
    spec, params, x, y, state, masks, backend = bf16_case("shared_masks", seed=3)
    for lr in (0.7, 0.5):
        backend.train_step(x, y, masks, backend.zero_state(3), lr=lr)
    path = str(tmp_path / "bf16.npz")
    save_checkpoint(path, backend.get_params(), {"epoch": 1})
    loaded, _ = load_checkpoint(path)
    assert all(a.dtype == np.float32 for a in loaded.values())
    bf16_lp, _ = backend.log_probs(x, backend.zero_state(3))
    expected, _, _ = reference.forward(
        {n: a.astype(np.float64) for n, a in loaded.items()}, spec, x, reference_state(spec, 3)
    )
    for name in ("torch", "tf"):
        other = bf16_case("shared_masks", seed=3, backend_name=name, precision="float32")[-1]
        other.set_params(loaded)
        got = other.get_params()
        for n in loaded:
            np.testing.assert_array_equal(got[n], loaded[n], err_msg=n)  # exactly the bf16 run's parameters
        lp, _ = other.log_probs(x, other.zero_state(3))
        np.testing.assert_allclose(lp, expected, rtol=1e-4, atol=1e-4)  # float32 products
    assert_bf16_close(bf16_lp, expected, "bf16 log-probabilities")


def reference_state(spec, B):
    return [np.zeros((B, spec.hidden_size)) for _ in range(spec.num_layers)]


def test_tf_bf16_matches_torch_bf16_and_the_oracle(bf16_cpu):
    pytest.importorskip("tensorflow")
    spec, params, x, y, state, masks, torch_backend = bf16_case("separate_masks", seed=4)
    tf_backend = bf16_case("separate_masks", seed=4, backend_name="tf")[-1]
    ref = reference.gradients(params, spec, x, y, state, masks, checks.WD)
    results = {}
    for name, b in (("torch", torch_backend), ("tf", tf_backend)):
        objective, grads = b.gradients(x, y, masks, b.state_from_numpy(state))
        results[name] = grads
        errors = {n: assert_bf16_close(grads[n], ref[n], f"{name} {n}") for n in ref}
        assert max(errors.values()) > 1e-4, (name, errors)  # bf16 products, not float32
    for n in ref:  # both round the same products' inputs: closer to each other than to the oracle
        assert_bf16_close(results["tf"][n], results["torch"][n], n, rel=BF16_REL / 3)
    assert not tf_backend._train.function_spec.jit_compile  # XLA's CPU bf16 dot is slower: graph mode


def test_bf16_is_refused_on_a_cpu_without_the_instructions(monkeypatch):
    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda path="/proc/cpuinfo": {"avx512f", "avx2"})
    with pytest.raises(
        RHNError,
        match=r"^precision=bf16 with torch on CPU needs bfloat16 instructions .*"
        r"slower than float32 here; use precision=float32$",
    ):
        bf16_case("no_masks", seed=0)
    bf16_case("no_masks", seed=0, precision="float32")  # float32 runs as ever
    pytest.importorskip("tensorflow")
    with pytest.raises(RHNError, match="precision=bf16 with tf on CPU needs bfloat16 instructions"):
        bf16_case("no_masks", seed=0, backend_name="tf")


def test_tf_bf16_is_refused_without_onednn(bf16_cpu, monkeypatch):
    pytest.importorskip("tensorflow")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    with pytest.raises(RHNError, match="TF_ENABLE_ONEDNN_OPTS=0 turns off: unset it or use precision=float32"):
        bf16_case("no_masks", seed=0, backend_name="tf")


def test_bf16_picks_the_onednn_path_at_any_size(bf16_cpu):
    assert resolve_impl("auto", "cpu", torch.float32, hidden_size=8, precision="bf16") == "onednn"
    assert resolve_impl("onednn", "cpu", torch.float32, precision="bf16") == "onednn"
    assert resolve_impl("auto", "cuda", torch.float32, precision="bf16") == "triton"  # CUDA: autocast, as before
    with pytest.raises(RHNError, match="precision=bf16 on CPU runs every product in oneDNN: use rhn_impl=auto"):
        resolve_impl("reference", "cpu", torch.float32, precision="bf16")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert cpu_bf16.cpu_flags(str(info)) == {"fpu", "sse", "avx512f", "avx512_bf16", "amx_tile"}
    assert cpu_bf16.cpu_flags(str(tmp_path / "missing")) == set()
