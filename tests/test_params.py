"""Canonical parameters: original counts, initialisation, in_size rule, checks."""

import dataclasses

import numpy as np
import pytest

from rhn_core.errors import RHNError
from rhn_core.params import (
    ModelSpec,
    check_params,
    count_params,
    describe,
    hidden_size_for_count,
    init_params,
    param_shapes,
    spec_from_config,
)


def config_of(*named):
    """The config Sacred builds for ``with NAMED...``."""
    from conftest import run_experiment

    return run_experiment("print_config", named).config


@pytest.mark.parametrize(
    "named, expected",
    [((), 20_018_000), (("ptb_sota",), 23_482_400), (("enwik8_sota",), 45_994_730), (("text8_sota",), 45_152_256)],
)
def test_parameter_counts_equal_the_original(named, expected):
    assert count_params(spec_from_config(config_of(*named))) == expected


def test_readme_depth_table_counts():
    # The original README's depth table: depth 8, 890 units untied = 32,082,040; depth 10, 830 tied = 23,482,400
    assert count_params(ModelSpec(10000, 890, 8, tied=False)) == 32_082_040
    assert count_params(ModelSpec(10000, 1050, 4, tied=True)) == 21_543_400


def test_in_size_rule():
    assert ModelSpec(205, 1500, 10, tied=False).in_size == 205  # V x V char embedding
    assert ModelSpec(205, 1500, 10, tied=True).in_size == 1500  # tying needs in_size = H
    assert ModelSpec(10000, 830, 10, tied=False).in_size == 830  # V >= H
    shapes = param_shapes(ModelSpec(27, 40, 3, num_layers=2, tied=False))
    assert shapes["embedding"] == (27, 27)
    assert shapes["RHN0/h_0/Matrix"] == (27 + 40, 40)
    assert shapes["RHN1/t_0/Matrix"] == (40 + 40, 40)  # stacked layers see H inputs
    assert shapes["RHN1/t_2/Matrix"] == (40, 40)
    assert "softmax_w" in shapes and "softmax_w" not in param_shapes(ModelSpec(27, 40, 3))


def test_original_initialisation():
    spec = ModelSpec(50, 30, 3, num_layers=2, tied=False, init_scale=0.04, init_bias=-4.0)
    params = init_params(spec, np.random.default_rng(0))
    for name, value in params.items():
        if "/t_" in name and name.endswith("Bias"):
            assert np.all(value == -4.0), name
        else:  # H biases too are uniform, not zero
            assert np.abs(value).max() <= 0.04 and np.abs(value).max() > 0.03, name
    a = init_params(spec, np.random.default_rng(3))
    b = init_params(spec, np.random.default_rng(3))
    assert all(np.array_equal(a[n], b[n]) for n in a)


def test_mismatch_lists_every_problem():
    spec = ModelSpec(20, 8, 2, tied=False)
    params = init_params(spec, np.random.default_rng(0))
    params["RHN0/h_1/Matrix"] = np.zeros((8, 9))
    del params["softmax_w"]
    params["extra"] = np.zeros(1)
    with pytest.raises(RHNError) as e:
        check_params(params, spec, "ckpt.npz")
    message = str(e.value)
    assert "missing softmax_w (8, 20)" in message
    assert "unexpected extra" in message
    assert "RHN0/h_1/Matrix is (8, 9), config needs (8, 8)" in message
    assert "\n" not in message
    assert message.startswith("ckpt.npz does not match the config") and message.endswith(
        "missing softmax_w (8, 20); unexpected extra; RHN0/h_1/Matrix is (8, 9), config needs (8, 8)"
    )
    with pytest.raises(RHNError, match=r"^checkpoint does not match"):  # the default name of the source
        check_params({}, spec)


def test_constant_other_biases_option():
    spec = ModelSpec(30, 8, 3, tied=False, init_bias=-4.0, init_other_bias=0)
    params = init_params(spec, np.random.default_rng(0))
    assert np.all(params["softmax_b"] == 0) and np.all(params["RHN0/h_2/Bias"] == 0)
    assert np.all(params["RHN0/t_1/Bias"] == -4.0) and np.abs(params["RHN0/h_1/Matrix"]).max() > 0


def test_parameters_are_float64_whatever_the_config_values_are():
    # integer values from the command line (init_bias=-4, init_other_bias=0) still give float64 arrays
    for other in ("uniform", 0):
        params = init_params(ModelSpec(30, 8, 2, init_bias=-4, init_other_bias=other), np.random.default_rng(0))
        assert {p.dtype for p in params.values()} == {np.dtype(np.float64)}, other


def test_the_parameter_table_printed_at_start():
    lines = describe(ModelSpec(10000, 1000, 4))  # the base config
    assert lines[0] == "embedding: (10000, 1000)" and lines[1] == "RHN0/h_0/Matrix: (2000, 1000)"
    assert lines[-2] == "softmax_b: (10000,)" and lines[-1] == "Total number of parameters: 20,018,000"
    assert len(lines) == 1 + 4 * 4 + 1 + 1


def test_a_config_from_before_the_init_other_bias_option_keeps_the_original_init():
    cfg = dict(vocab_size=10, hidden_size=4, depth=2, num_layers=1, tied=True, init_scale=0.04, init_bias=-2.0)
    spec = spec_from_config(cfg)  # e.g. the stored config of an older run
    assert spec.init_other_bias == "uniform"
    assert np.ptp(init_params(spec, np.random.default_rng(0))["RHN0/h_1/Bias"]) > 0


@pytest.mark.parametrize("spec", [ModelSpec(50, 1, 2, tied=False), ModelSpec(30, 1, 3, num_layers=2, tied=True)])
def test_hidden_size_for_a_parameter_count_is_the_closest_of_all_sizes(spec):
    # against an exhaustive search (not the bisection): every count exactly, every midpoint
    # between neighbours (a tie: the smaller H), one either side of it, and below the smallest
    counts = {h: count_params(dataclasses.replace(spec, hidden_size=h)) for h in range(1, 130)}
    targets = {0, counts[1] - 1}
    for h in range(1, 120):
        middle = (counts[h] + counts[h + 1]) / 2
        targets |= {counts[h], middle - 1, middle, middle + 1}
    for target in sorted(targets):
        expected = min(counts, key=lambda h: (abs(counts[h] - target), h))
        found = hidden_size_for_count(spec, target)
        assert found == expected and type(found) is int, (target, found)  # the sweep writes it into a config
