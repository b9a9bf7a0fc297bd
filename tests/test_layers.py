"""The RHN layers in a user's own model, by each framework's conventions: Keras save / load,
torch state_dict, torch.export and torch.compile (aot_eager backend; inductor: see the note in the README)."""

import numpy as np
import pytest


def test_keras_models_with_the_rhn_layers_save_and_load(tmp_path):
    keras = pytest.importorskip("keras")
    from rhn_core.backends.tf_rhn import RHN, RHNCell

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5, 6)).astype("float32"), rng.normal(size=(8, 5, 3)).astype("float32")
    inputs = keras.Input((None, 6))
    cell_out = keras.layers.RNN(RHNCell(10, depth=2, init_bias=-1.0), return_sequences=True)(inputs)
    stack_out, _ = RHN(10, depth=3, num_layers=2)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Concatenate()([cell_out, stack_out])))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)  # trained weights, not the initial ones, must come back
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    cell = loaded.layers[1].cell
    assert isinstance(cell, RHNCell) and (cell.units, cell.depth, cell.init_bias) == (10, 2, -1.0)
    stack = next(layer for layer in loaded.layers if isinstance(layer, RHN))
    assert (stack.hidden_size, stack.depth, stack.num_layers) == (10, 3, 2)


def test_torch_rhn_state_dict_and_export():
    torch = pytest.importorskip("torch")
    from rhn_core.backends.torch_rhn import RHN

    torch.manual_seed(0)
    rhn, x = RHN(6, 10, depth=2, num_layers=2), torch.randn(4, 5, 6)
    out, state = rhn(x)
    copy = RHN(6, 10, depth=2, num_layers=2)
    copy.load_state_dict(rhn.state_dict())
    torch.testing.assert_close(copy(x)[0], out)
    for p in rhn.parameters():  # exported for inference: the recurrence writes into preallocated buffers
        p.requires_grad_(False)
    exported = torch.export.export(rhn, (x,))
    again, final = exported.module()(x)
    torch.testing.assert_close(again, out)
    torch.testing.assert_close(final, state)


def test_torch_compile_of_the_rhn_module_equals_eager():
    torch = pytest.importorskip("torch")
    from rhn_core.backends.torch_rhn import RHN

    torch.manual_seed(0)
    rhn, x = RHN(4, 8, depth=2).double(), torch.randn(2, 3, 4, dtype=torch.float64)  # tiny: tracing T x D steps
    out, state = rhn(x)
    grads = torch.autograd.grad(out.square().sum() + state.sum(), list(rhn.parameters()))
    # aot_eager traces forward and backward as inductor would but runs them with eager kernels (about
    # 10 CPU seconds here; inductor's C++ compilation took minutes on 2 cores).
    out2, state2 = torch.compile(rhn, backend="aot_eager")(x)
    grads2 = torch.autograd.grad(out2.square().sum() + state2.sum(), list(rhn.parameters()))
    assert torch.equal(out2, out) and torch.equal(state2, state)
    for g2, g in zip(grads2, grads):
        assert torch.equal(g2, g)
