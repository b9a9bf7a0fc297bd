"""Checkpoints of the original TensorFlow code, written in its layout by the test itself."""

import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from conftest import REPO, run_experiment  # noqa: E402
from rhn_core import reference  # noqa: E402
from rhn_core.checkpoint import load_checkpoint  # noqa: E402
from rhn_core.convert_tf1 import canonical_name  # noqa: E402
from rhn_core.params import init_params, layer_names  # noqa: E402


def write_original_checkpoint(prefix, params, spec):
    """A TF1 graph with the original's variable scopes, saved by tf.compat.v1.train.Saver."""
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        with v1.variable_scope("model"):
            v1.get_variable("embedding", initializer=params["embedding"])
            for l in range(spec.num_layers):
                with v1.variable_scope(f"RHN{l}"):
                    for k in range(spec.depth):
                        hm, hb, tm, tb = layer_names(l, k)
                        for gate, matrix, bias in (("h", hm, hb), ("t", tm, tb)):
                            with v1.variable_scope(f"{gate}_{k}"), v1.variable_scope("Linear"):
                                v1.get_variable("Matrix", initializer=params[matrix])
                                v1.get_variable("Bias", initializer=params[bias])
            if not spec.tied:
                v1.get_variable("softmax_w", initializer=params["softmax_w"])
            v1.get_variable("softmax_b", initializer=params["softmax_b"])
        v1.get_variable("global_step", initializer=np.int64(7))  # not a model variable: ignored
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver().save(sess, prefix)


def test_names():
    assert canonical_name("model/RHN0/h_3/Linear/Matrix") == "RHN0/h_3/Matrix"
    assert canonical_name("model/RHN1/t_0/Linear/Bias") == "RHN1/t_0/Bias"
    assert canonical_name("model/embedding") == "embedding"
    assert canonical_name("model/softmax_w") == "softmax_w"
    assert canonical_name("global_step") is None and canonical_name("model/RHN0/h_3/Linear") is None


@pytest.mark.slow
def test_original_checkpoint_converts_and_evaluates_in_both_backends(small_text, tmp_path):
    cfg = run_experiment("print_config", ["tiny"], dataset="chars", data_path=small_text, tied=False).config
    from rhn_core import loop

    corpus, spec = loop.corpus_and_spec(dict(cfg))
    params = init_params(spec, np.random.default_rng(0))
    write_original_checkpoint(str(tmp_path / "ptb_1_best_model.ckpt"), params, spec)
    out = tmp_path / "best.npz"
    result = subprocess.run(
        [sys.executable, "-m", "rhn_core.convert_tf1", str(tmp_path / "ptb_1_best_model.ckpt"), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    converted, _ = load_checkpoint(str(out))
    assert set(converted) == set(params)
    for name in params:
        np.testing.assert_array_equal(converted[name], params[name], err_msg=name)
    scores = [
        run_experiment(
            "evaluate",
            ["tiny"],
            backend=b,
            dataset="chars",
            data_path=small_text,
            tied=False,
            dtype="float64",
            load_model=str(out),
        ).result
        for b in ("torch", "tf")
    ]
    assert scores[0]["full_test_perplexity"] == pytest.approx(scores[1]["full_test_perplexity"], rel=1e-10)
    # and the number is the NumPy reference's, from the original weights
    ids = corpus.test
    lp, _, _ = reference.forward(params, spec, np.asarray(ids[:-1])[None, :], [np.zeros((1, spec.hidden_size))])
    nll = -np.take_along_axis(lp[0], np.asarray(ids[1:])[:, None], 1).mean()
    assert scores[0]["full_test_perplexity"] == pytest.approx(np.exp(nll), rel=1e-10)


@pytest.mark.slow  # over 5 s on an idle 2-core machine (starts the entry point): out of the fast tier
def test_not_a_checkpoint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rhn_core.convert_tf1", str(tmp_path / "missing.ckpt"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "RHNError: cannot read TensorFlow checkpoint" in result.stderr
    assert not os.path.exists(tmp_path / "out.npz")
