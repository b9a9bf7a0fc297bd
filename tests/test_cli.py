"""The entry points as a user meets them: help, quiet output, progress in log files, stored sources."""

import io
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, backend_params, entry_argv, entry_env
from rhn_core.hyperparams import NAMED_CONFIGS
from rhn_core.progress import LineProgress, progress_bar

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def cli(backend, *args, cwd=None):
    """``python rhn_train_<backend>.py ARGS`` as a user runs it: output to pipes (no terminal), no quieting env."""
    env = entry_env({k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    return subprocess.run(
        [sys.executable, *entry_argv(backend), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def tiny_chars(small_text, save_dir):
    return [
        "tiny",
        "dataset=chars",
        f"data_path={small_text}",
        "batch_size=16",
        "num_steps=10",
        "max_max_epoch=2",
        f"save_dir={save_dir}",
        "progress=True",
    ]


@pytest.mark.parametrize("backend", backend_params())
def test_help_reads_like_a_users_manual(backend, tmp_path):
    result = cli(backend, "--help", cwd=tmp_path)  # run from elsewhere: still the script's own name
    assert result.returncode == 0, result.stderr
    text = result.stdout
    argv = entry_argv(backend)
    name = os.path.basename(argv[0]) if len(argv) == 1 else f"'python -m {' '.join(argv[1:])}'"
    assert f"Usage:\n  {name} [(with UPDATE...)]" in text
    assert text.split("\n\n")[1].startswith("Train, evaluate or sample a Recurrent Highway Network")
    assert "make_experiment" not in text and "entry points" not in text  # nothing written for developers
    for name, scope in NAMED_CONFIGS.items():  # one line each, with its description
        line = next(line for line in text.splitlines() if line.split()[:1] == [name])
        assert scope.__doc__.strip() in line
    for command in ("evaluate", "evaluate_mc", "sample", "print_config"):
        assert any(line.split()[:1] == [command] for line in text.splitlines()), command


def test_plain_run_output_has_no_bar_frames_and_no_sacred_warning(small_text, tmp_path):
    pytest.importorskip("torch")
    result = cli("torch", "with", *tiny_chars(small_text, tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stderr + result.stdout  # redirected output: no carriage-return frames
    assert "No observers" not in result.stderr
    assert "\x1b[" not in result.stdout  # the opening config listing without colour codes
    assert "Configuration (modified, added, typechanged, doc):\n" in result.stdout
    assert "\n  hidden_size = 16 " in result.stdout
    assert "Full Test Perplexity" in result.stdout


def test_tf_run_stores_every_source_it_ran_and_no_tensorflow_chatter(small_text, tmp_path):
    pytest.importorskip("tensorflow")
    result = cli("tf", "-F", str(tmp_path / "obs"), "with", *tiny_chars(small_text, tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "obs" / "1"
    captured = (folder / "cout.txt").read_text()
    for text in (result.stderr, captured):  # neither on the screen nor in the stored output
        for noise in ("absl::InitializeLog", "cpu_feature_guard", "oneDNN", "cuInit", "XLA service"):
            assert noise not in text, noise
    assert captured.startswith("INFO - rhn_prediction - Running command 'main'\n")
    run = json.loads((folder / "run.json").read_text())
    sources = dict(run["experiment"]["sources"])
    expected = {
        "rhn_train_tf.py",
        "rhn_core/backends/tf_rhn.py",
        "rhn_core/data/readers.py",
        "rhn_core/masks.py",
        "rhn_core/params.py",
        "rhn_core/loop.py",
        "rhn_core/hyperparams.py",
        "rhn_core/experiment.py",
    }
    assert expected <= set(sources), expected - set(sources)
    assert "rhn_core/backends/torch_rhn.py" not in sources  # only what this run executed
    assert run["experiment"]["mainfile"] == "rhn_train_tf.py" and run["experiment"]["base_dir"] == REPO
    for name in expected:  # stored as they are on disk, readable back from the run folder
        stored = (folder.parent / sources[name]).read_bytes()
        assert stored == open(os.path.join(REPO, name), "rb").read(), name


def test_progress_in_a_log_file_is_plain_lines_at_an_interval():
    log = io.StringIO()  # not a terminal
    with progress_bar(file=log, interval=0.0, total=1000, desc="epoch 1", unit="char", leave=False) as bar:
        assert isinstance(bar, LineProgress)
        for step in range(10):
            bar.set_postfix(ppl=f"{10 - step}.00", refresh=False)
            bar.update(100)
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue() and lines[-1] == ""
    assert lines[0].startswith("epoch 1:  10% 100/1000") and "ppl=10.00" in lines[0]
    assert lines[-2].startswith("epoch 1: 100% 1000/1000")
    quiet = io.StringIO()
    with progress_bar(file=quiet, interval=3600, total=1000, desc="epoch 1", leave=False) as bar:
        bar.update(1000)
    assert quiet.getvalue() == ""  # a pass shorter than the interval prints nothing


def test_progress_at_a_terminal_is_tqdms_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    with progress_bar(file=screen, total=10, desc="epoch 1", mininterval=0) as bar:
        assert not isinstance(bar, LineProgress)
        bar.update(10)
    assert "\r" in screen.getvalue()


def test_tensorflow_start_up_notices_are_filtered_like_tensorflows_own_log_level():
    """The lines TF 2.21 prints at import on CPUs with its oneDNN operations (seen on Intel and AMD
    AVX-512 machines), filtered by rhn_core.backends.tf_import on every CPU, with or without TF."""
    from rhn_core.backends.tf_import import keep_lines

    pre = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    onednn = (
        "I0000 00:00:1796479678.384580    2290 port.cc:153] oneDNN custom operations are on. You may see "
        "slightly different numerical results.\n"
    )
    guard = (
        "I0000 00:00:1796479678.417206    2290 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.\n"
    )
    warning = "W0000 00:00:1796479678.5    2290 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\n"
    error = "E0000 00:00:1796479678.6    2290 cuda_executor.cc:1309] failed call to cuInit: UNKNOWN ERROR (303)\n"
    fatal = "F0000 00:00:1796479678.7    2290 port.cc:99] Check failed: something\n"
    python = "/usr/lib/python3/site-packages/keras/__init__.py:1: DeprecationWarning: a Python warning\n"
    text = pre + onednn + guard + python + warning + error + fatal + pre + onednn
    assert keep_lines(text, 3) == python + fatal
    assert keep_lines(text, 2) == python + error + fatal
    assert keep_lines(text, 1) == python + warning + error + fatal
    assert keep_lines(text, 0) == text
