"""benchmarks/gpu_check.py in its CPU quick mode, with Sacred and TensorFlow made unimportable
(the GPU machine has neither), so the prepared device check cannot rot."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_quick_runs_with_only_torch_triton_and_numpy(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    code = (
        "import runpy, sys\n"
        "sys.modules.update(sacred=None, tensorflow=None, keras=None, pytest=None)  # imports of these fail\n"
        f"sys.argv = ['gpu_check.py', '--quick', '--out', {str(tmp_path)!r}]\n"
        f"runpy.run_path({os.path.join(REPO, 'benchmarks', 'gpu_check.py')!r}, run_name='__main__')\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"] and all(c["ok"] for c in report["checks"]), report["checks"]
    rows = report["throughput"]
    assert [r["model"].split(" ", 2)[2] for r in rows[:4]] == [
        "reference eager",
        "reference + CUDA graph",
        "fused (Triton)",
        "fused + CUDA graph",
    ]
    assert all(r["ms"] > 0 and not r["error"] for r in rows), rows
    assert rows[-1]["model"].startswith("LSTM") and abs(rows[-1]["params"] / rows[0]["params"] - 1) < 0.05
    assert all(not r["error"] and r["train_bpc"] > 0 and r["valid_bpc"] > 0 for r in report["precision"])
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "checks: 3 of 3 passed" in text and "fused (Triton)" in text


def test_gpu_check_shapes_are_those_of_the_named_configs():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import gpu_check
    from rhn_core.hyperparams import resolve_config

    for name, shape in gpu_check.SHAPES.items():
        cfg = resolve_config(name)
        for key in ("vocab_size", "hidden_size", "depth", "num_layers", "tied", "init_bias", "batch_size", "num_steps"):
            assert shape[key] == cfg[key], (name, key)
        assert shape["drops"] == tuple(cfg[k] for k in ("drop_x", "drop_i", "drop_h", "drop_o"))
