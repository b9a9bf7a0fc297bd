"""The core/backend contract (``rhn_core.backends.base``): every registered backend satisfies it,
signatures included; the core calls nothing on a backend or its comm outside it; the NumPy backend
runs the whole loop and trains exactly as torch in float64."""

import ast
import importlib
import inspect
import os

import numpy as np
import pytest

from rhn_core import loop, mc, sample
from rhn_core.backends import BACKENDS, available
from rhn_core.backends.base import Backend, BackendFactory, Comm, Option, check_options
from rhn_core.checkpoint import load_checkpoint
from rhn_core.errors import RHNError
from rhn_core.hyperparams import resolve_config
from rhn_core.params import ModelSpec, init_params

SPEC = ModelSpec(vocab_size=11, hidden_size=6, depth=2, num_layers=2, tied=False)
CORE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rhn_core")


def members(protocol):
    """The attributes and methods a protocol declares."""
    methods = {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return set(protocol.__annotations__) | methods


class FakeRun:
    """What the loop uses of a Sacred run."""

    def __init__(self):
        self.info, self.observers = {}, []

    def log_scalar(self, name, value, step):
        pass

    def add_artifact(self, path, name=None):
        pass


def backend_module(name):
    pytest.importorskip(BACKENDS[name].framework)
    return importlib.import_module(BACKENDS[name].module)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_registered_backend_satisfies_the_protocol(name):
    cls = backend_module(name).Backend
    backend = cls(SPEC, init_params(SPEC, np.random.default_rng(0)), 0.0, 1.0, "cpu", "float64", threads=1)
    assert isinstance(backend, Backend) and isinstance(backend.comm, Comm)
    assert backend.name == name
    for method in members(Backend) - set(Backend.__annotations__):
        want = inspect.signature(getattr(Backend, method))
        got = inspect.signature(getattr(cls, method))
        assert list(got.parameters) == list(want.parameters), (name, method)
    want = list(inspect.signature(BackendFactory.__call__).parameters.values())[1:]  # without self
    got = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [(p.name, p.kind, p.default) for p in got] == [(p.name, p.kind, p.default) for p in want], name
    assert set(cls.OPTIONS) >= {"rhn_impl", "cuda_graphs", "precision", "replicas"}  # what the loop hands over
    with pytest.raises(RHNError, match=rf"^colour is not an option of the {name} backend \(its options: "):
        cls(SPEC, init_params(SPEC, np.random.default_rng(0)), 0.0, 1.0, "cpu", "float64", options={"colour": 1})


def test_options_are_checked_against_what_a_backend_declares():
    supported = {"a": Option(1, (1, 2), "use a=1 here"), "b": Option("x")}
    assert check_options("demo", supported, None) == {"a": 1, "b": "x"}
    assert check_options("demo", supported, {"a": 2, "b": "y"}) == {"a": 2, "b": "y"}
    with pytest.raises(RHNError, match=r"^a=3 is not supported by the demo backend: use a=1 here$"):
        check_options("demo", supported, {"a": 3})
    with pytest.raises(RHNError, match=r"^c is not an option of the demo backend \(its options: a, b\)$"):
        check_options("demo", supported, {"c": 0})


def attribute_uses(path, names):
    """Attributes read on ``X.backend``, ``backend``, ``X.comm`` and ``comm`` in a module's source."""
    uses = {"backend": set(), "comm": set()}
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Attribute):
            base = node.value
            owner = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
            if owner in names:
                uses[names[owner]].add(node.attr)
    return uses


@pytest.mark.parametrize("module", ["loop.py", "runtime.py", "resume.py", "mc.py", "sample.py", "experiment.py"])
def test_the_core_uses_nothing_of_a_backend_outside_the_contract(module):
    uses = attribute_uses(os.path.join(CORE, module), {"backend": "backend", "comm": "comm"})
    assert uses["backend"] <= members(Backend), uses["backend"] - members(Backend)
    assert uses["comm"] <= members(Comm), uses["comm"] - members(Comm)


class Recorder:
    """A backend (or comm) that notes every attribute the core touches."""

    def __init__(self, inner, used):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_used", used)

    def __getattr__(self, name):
        self._used.add(name)
        value = getattr(self._inner, name)
        return Recorder(value, self._used.setdefault("comm", set())) if name == "comm" else value

    def __setattr__(self, name, value):
        self._used.add(name)
        setattr(self._inner, name, value)


class Used(set):
    """Names touched on the backend, and (under 'comm') on its comm."""

    def setdefault(self, key, default):
        self.__dict__.setdefault(key, default)
        return self.__dict__[key]


def tiny(text, save_dir, **updates):
    return resolve_config(
        "tiny",
        dataset="chars",
        data_path=text,
        batch_size=3,
        num_steps=5,
        hidden_size=8,
        max_max_epoch=1,
        dtype="float64",
        device="cpu",
        seed=2,
        save_dir=str(save_dir),
        threads=1,
        **updates,
    )


def test_a_run_train_resume_evaluate_mc_sample_touches_only_the_contract(small_text, tmp_path, monkeypatch):
    """The NumPy backend through every command, behind a recorder: the whole loop without a framework."""
    module = importlib.import_module(BACKENDS["numpy"].module)
    used, real = Used(), module.Backend
    monkeypatch.setattr(module, "Backend", lambda *args, **kwargs: Recorder(real(*args, **kwargs), used))
    cfg = tiny(small_text, tmp_path, drop_x=0.1, drop_i=0.2, drop_h=0.2, drop_o=0.2)
    first = loop.Trainer(cfg, "numpy", FakeRun())
    first.train()
    best = str(tmp_path / "best.npz")
    resumed = loop.Trainer(dict(cfg, max_max_epoch=2, resume=str(tmp_path / "last.npz")), "numpy", FakeRun())
    assert resumed.epoch == 2
    resumed.train()
    results = loop.evaluate(dict(cfg, load_model=best), "numpy", FakeRun())
    assert 1 < results["full_test_perplexity"] < 60
    mc_cfg = dict(cfg, load_model=best, mc_steps=2, mc_batch_size=2, mc_accept_perplexity=1e6)
    assert 1 < mc.evaluate_mc(mc_cfg, "numpy", FakeRun()) < 1e6
    assert len(sample.sample(dict(cfg, load_model=best, sample_length=7), "numpy", FakeRun())) == 7
    assert used <= members(Backend), set(used) - members(Backend)
    assert used.comm <= members(Comm), used.comm - members(Comm)
    assert {"train_step", "eval_step", "target_log_probs", "log_probs", "set_params"} <= used  # all were driven


@pytest.mark.skipif(not available("torch"), reason="torch is not installed")
def test_numpy_backend_trains_tiny_exactly_as_torch_in_float64(small_text, tmp_path):
    weights = {}
    for name in ("numpy", "torch"):
        cfg = tiny(small_text, tmp_path / name, drop_x=0.1, drop_i=0.2, drop_h=0.2, drop_o=0.2, weight_decay=1e-3)
        loop.Trainer(cfg, name, FakeRun()).train()
        weights[name], state = load_checkpoint(str(tmp_path / name / "last.npz"))
        assert int(state["epoch"]) == 2  # one whole epoch trained
    start = init_params(
        loop.Trainer(tiny(small_text, tmp_path / "s"), "numpy", FakeRun()).spec,
        np.random.default_rng(np.random.SeedSequence(2).spawn(2)[0]),
    )
    for n, w in weights["numpy"].items():
        assert np.abs(w - start[n]).max() > 1e-3, n  # training moved every parameter far beyond the tolerance
        np.testing.assert_allclose(w, weights["torch"][n], rtol=0, atol=1e-10, err_msg=n)


def test_numpy_backend_refuses_what_it_cannot_do_in_one_line():
    cls = importlib.import_module(BACKENDS["numpy"].module).Backend
    params = init_params(SPEC, np.random.default_rng(0))
    with pytest.raises(RHNError, match="computes in float64 only: use dtype=float64"):
        cls(SPEC, params, dtype="float32")
    with pytest.raises(RHNError, match="runs on the CPU: use device=cpu"):
        cls(SPEC, params, device="cuda", dtype="float64")
    with pytest.raises(RHNError, match="replicas=2 is not supported by the numpy backend"):
        cls(SPEC, params, dtype="float64", options={"replicas": 2})
