"""Faults a hostile but honest user meets, through the entry points as a user runs them.

Each case checks the one-line ``RHNError``, the exit status and what is (not) written:
an unwritable or full ``save_dir``, a diverging run, a ``last.npz`` without its
``best.npz``, wrong config types and values (every key), unknown words and a
checkpoint resumed on other data, stale temporaries, files that are not checkpoints.
Passwords in config values are tested against a real MongoDB in ``test_tracking.py``.
"""

import errno
import os
import pickle
import runpy
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import REPO, assert_one_line_error, backend_params, native_updates, run_cli, run_experiment  # noqa: E402
from rhn_core import checkpoint, loop  # noqa: E402
from rhn_core.atomic import temporary_path  # noqa: E402
from rhn_core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from rhn_core.data import readers  # noqa: E402
from rhn_core.errors import RHNError  # noqa: E402
from rhn_core.hyperparams import KEY_CHECKS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def chars(small_text, save_dir, *extra):
    """Command-line updates of a character-level run of a fraction of a second per epoch."""
    return [
        "tiny",
        "dataset=chars",
        f"data_path={small_text}",
        "batch_size=16",
        "num_steps=10",
        f"save_dir={save_dir}",
        *extra,
    ]


def updates(small_text, save_dir, **extra):
    return dict(dataset="chars", data_path=small_text, batch_size=16, num_steps=10, save_dir=str(save_dir), **extra)


@pytest.fixture(scope="module")
def trained(small_text, tmp_path_factory):
    """A folder with the best.npz and last.npz of one finished epoch (read only: copy what you change)."""
    folder = tmp_path_factory.mktemp("trained")
    run_experiment(named=["tiny"], **updates(small_text, folder, max_max_epoch=1))
    return folder


def snapshot(folder):
    """Name -> bytes of every file in ``folder`` (hidden ones included)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.exists() else {}


def dead_pid():
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- 2. save_dir: unwritable at the start, full disk mid-run ---------------------------------
def test_save_dir_under_a_regular_file_fails_at_the_start(small_text, tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_cli("with", *chars(small_text, tmp_path / "file" / "run"))
    assert_one_line_error(
        result,
        f"cannot write checkpoints to {tmp_path / 'file' / 'run'} (Not a directory",
        "set save_dir= to a writable folder",
    )
    assert "Epoch" not in result.stdout and snapshot(tmp_path) == {"file": b"x"}


def test_save_dir_that_is_a_regular_file_fails_at_the_start(small_text, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_cli("with", *chars(small_text, tmp_path / "file")), "(File exists", "set save_dir=")


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write into: chmod for a user, a read-only tmpfs for root (who ignores modes)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("running as root without the right to mount: no read-only folder can be made here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_read_only_save_dir_fails_at_the_start(small_text, read_only_dir):
    result = run_cli("with", *chars(small_text, read_only_dir / "run"))
    line = assert_one_line_error(result, f"cannot write checkpoints to {read_only_dir / 'run'}", "set save_dir=")
    assert "Read-only file system" in line or "Permission denied" in line
    assert "Epoch" not in result.stdout and not (read_only_dir / "run").exists()


def test_full_disk_mid_run_keeps_the_checkpoints_and_says_how_to_go_on(small_text, tmp_path, monkeypatch):
    real_savez, calls = np.savez, {"n": 0}

    def savez_on_a_disk_that_fills_up(file, **arrays):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 wrote best.npz and last.npz; epoch 2's first write finds the disk full
            file.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(file, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", savez_on_a_disk_that_fills_up)
    with pytest.raises(RHNError) as e:
        run_experiment(named=["tiny"], **updates(small_text, tmp_path, max_max_epoch=2))
    message = str(e.value)
    assert "\n" not in message and "No space left on device" in message
    assert f"the checkpoints already on disk are unchanged: free space and continue with resume={tmp_path}" in message
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "last.npz"]  # no temporary left
    assert int(load_checkpoint(str(tmp_path / "last.npz"))[1]["epoch"]) == 2  # epoch 1's, whole
    monkeypatch.undo()
    run = run_experiment(
        named=["tiny"], **updates(small_text, tmp_path, max_max_epoch=2, resume=str(tmp_path / "last.npz"))
    )
    assert run.info["epoch_nr"] == 2 and run.info["full_test_perplexity"] > 1


def test_really_full_disk_on_a_small_tmpfs(small_text, trained, tmp_path):
    """The same on a real file system that fills up (needs the right to mount, as root in a container)."""
    folder = tmp_path / "small"
    folder.mkdir()
    page = 4096
    need = sum(-(-os.path.getsize(trained / n) // page) * page for n in ("best.npz", "last.npz"))
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={need + page}", "tmpfs", str(folder)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here; the full disk is simulated in the test above")
    try:
        result = run_cli("with", *chars(small_text, folder, "max_max_epoch=2"))
        assert_one_line_error(
            result,
            "No space left on device",
            "the checkpoints already on disk are unchanged",
            f"resume={folder / 'last.npz'}",
            before_config=False,
        )
        assert sorted(os.listdir(folder)) == ["best.npz", "last.npz"]
        assert int(load_checkpoint(str(folder / "last.npz"))[1]["epoch"]) == 2
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# --- 3. divergence ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", backend_params())
def test_diverging_run_stops_with_one_line(small_text, tmp_path, backend):
    native = [f"{k}={v}" for k, v in native_updates(backend).items()]
    # learning_rate=50: finite but huge losses (perplexity ~1e78), where math.exp used to overflow
    result = run_cli("with", *chars(small_text, tmp_path, "learning_rate=50", *native), backend=backend)
    assert_one_line_error(
        result,
        "the run diverged",
        "in epoch 1",
        "stopped without saving these weights",
        "lower learning_rate",
        before_config=False,
    )
    assert snapshot(tmp_path) == {}


def test_diverged_weights_never_replace_a_good_last_checkpoint(small_text, trained, tmp_path, monkeypatch):
    for name in ("best.npz", "last.npz"):
        shutil.copy(trained / name, tmp_path / name)
    before = snapshot(tmp_path)
    batched = loop.Evaluator.batched
    # epoch 2's training looks sane but its weights score as the issue's 2.45e89 on valid
    monkeypatch.setattr(
        loop.Evaluator, "batched", lambda self, split: 2.45e89 if split == "valid" else batched(self, split)
    )
    with pytest.raises(
        RHNError,
        match=r"valid perplexity became 2.45e\+89 \(beyond vocab_size\^2 = [\d,]+: the run "
        r"diverged\) in epoch 2 .*the last good checkpoint is .*last.npz",
    ):
        run_experiment(
            named=["tiny"], **updates(small_text, tmp_path, max_max_epoch=2, resume=str(tmp_path / "last.npz"))
        )
    assert snapshot(tmp_path) == before


def test_perplexity_of_an_overflowing_loss_is_infinite():
    assert loop.perplexity(1e6, 10) == float("inf") and loop.diverged(float("inf"), 50)
    assert loop.perplexity(float("nan"), 10) != loop.perplexity(float("nan"), 10)  # NaN, no exception
    assert not loop.diverged(49.0**2 - 1, 49) and loop.diverged(49.0**2, 49)


# --- 4. last.npz without its best.npz -------------------------------------------------------
def test_last_checkpoint_without_its_best_fails_at_the_start(small_text, trained, tmp_path):
    shutil.copy(trained / "last.npz", tmp_path / "last.npz")
    before = snapshot(tmp_path)
    resume = ["max_max_epoch=2", f"resume={tmp_path / 'last.npz'}"]
    result = run_cli("with", *chars(small_text, tmp_path, *resume))
    assert_one_line_error(result, "best epoch (1) is kept in its best.npz", "put that run's best.npz there")
    assert "Epoch" not in result.stdout and snapshot(tmp_path) == before
    # another run's best.npz (seed 2) is no substitute
    run_experiment(named=["tiny"], **updates(small_text, tmp_path / "other", max_max_epoch=1, seed=2))
    shutil.copy(tmp_path / "other" / "best.npz", tmp_path / "best.npz")
    assert_one_line_error(run_cli("with", *chars(small_text, tmp_path, *resume)), "it is another run's best.npz")
    shutil.copy(trained / "best.npz", tmp_path / "best.npz")  # the right one: the run goes on to the end
    result = run_cli("with", *chars(small_text, tmp_path, *resume))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Full Test Perplexity" in result.stdout


# --- 5, 6. every config key: wrong types, wrong values ---------------------------------------
def entry_point(backend="torch"):
    """The ``ex`` of ``rhn_train_<backend>.py``, as its command line builds it."""
    from sacred import SETTINGS

    SETTINGS.CAPTURE_MODE = "sys"  # leave file descriptors to pytest
    return runpy.run_path(os.path.join(REPO, f"rhn_train_{backend}.py"))["ex"]


def entry_point_error(ex, key, value, capsys):
    """Run ``with tiny KEY=VALUE`` through Sacred's command line of ``ex``, in-process (fast); the error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        ex.run_commandline(["rhn_train.py", "with", "tiny", f"{key}={value}"])  # refused before anything is written
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("RHNError: ")]
    assert e.value.code == 1 and "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def test_every_config_key_has_a_check():
    keys = set(entry_point().run("print_config", options={"--loglevel": "ERROR"}).config)
    missing = sorted(keys - set(KEY_CHECKS))
    assert not missing, f"config key(s) {missing} have no check: add them to KEY_CHECKS in rhn_core/hyperparams.py"


def test_every_config_key_refuses_a_value_of_the_wrong_type(capsys):
    ex = entry_point()
    config = ex.run("print_config", options={"--loglevel": "ERROR"}).config
    for key, default in config.items():
        for bad in ["None"] if isinstance(default, str) else ["abc", "None", "[1]"]:
            if key == "seed" and bad == "None":
                continue  # Sacred's meaning: draw a seed
            line = entry_point_error(ex, key, bad, capsys)
            assert key in line and (bad.strip("'") in line or bad == "None"), (key, bad, line)


@pytest.mark.parametrize(
    "backend, update, message",
    [
        ("torch", "weight_decay=abc", "weight_decay='abc' must be a finite number >= 0"),
        ("tf", "drop_x=None", "drop_x=None is a drop probability: use a number in [0, 1)"),
        ("torch", "max_epoch=abc", "max_epoch='abc' must be an integer >= 0"),
        ("tf", "init_bias=abc", "init_bias='abc' must be a finite number"),
        ("torch", "seed=abc", "seed='abc' must be an integer >= 0"),
        ("torch", "weight_decay=1e999", "weight_decay=inf must be a finite number >= 0"),
        ("tf", "lr_decay=0.98", "lr_decay=0.98 must be a number >= 1: the learning rate is divided by it"),
        ("torch", "tied=1", "tied=1: use True or False"),
    ],
)
def test_issue_examples_on_the_command_line(small_text, tmp_path, backend, update, message):
    result = run_cli("with", *chars(small_text, tmp_path / "run"), update, backend=backend)
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()  # refused before anything is written


# --- 7. data problems -------------------------------------------------------------------------
@pytest.fixture
def ptb_copy(synthetic_ptb, tmp_path):
    for split in ("train", "valid", "test"):
        shutil.copy(os.path.join(synthetic_ptb, f"ptb.{split}.txt"), tmp_path / f"ptb.{split}.txt")
    return tmp_path


def test_unknown_words_are_counted_and_still_dropped(ptb_copy, tmp_path):
    valid = (ptb_copy / "ptb.valid.txt").read_text()
    lines = valid.splitlines(keepends=True)
    lines[0] = " zzunknown1 " + lines[0].lstrip() + " zzunknown2 zzunknown3 "
    (ptb_copy / "ptb.valid.txt").write_text("".join(lines))
    corpus = readers.read_ptb(str(ptb_copy))
    words = len(valid.replace("\n", " <eos> ").split()) + 3
    assert corpus.dropped == {"valid": (3, words), "test": (0, corpus.dropped["test"][1])}
    (ptb_copy / "ptb.valid.txt").write_text(valid)
    assert np.array_equal(readers.read_ptb(str(ptb_copy)).valid, corpus.valid)  # the original dropping, kept
    (ptb_copy / "ptb.valid.txt").write_text("".join(lines))
    result = run_cli(
        "with",
        "tiny",
        f"data_path={ptb_copy}",
        f"save_dir={tmp_path / 'run'}",
        "max_max_epoch=1",
        "hidden_size=8",
        "batch_size=20",
        "num_steps=30",
        "full_eval_num_steps=1000",
    )  # few steps
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        f"Note: 3 of the {words:,} words of the valid file ({100 * 3 / words:.2f} %) are not in the training "
        f"vocabulary and are left out, as the original did: they are not scored"
    ) in result.stdout


def test_valid_file_of_unknown_words_is_named_as_such(ptb_copy, tmp_path):
    (ptb_copy / "ptb.valid.txt").write_text(" these words are nowhere in training \n" * 50)
    result = run_cli("with", "tiny", f"data_path={ptb_copy}", f"save_dir={tmp_path / 'run'}")
    line = assert_one_line_error(
        result,
        "none of the 300 words of",
        "ptb.valid.txt occurs in",
        "the valid file is not from the same corpus as the training file",
    )
    assert "batch_size" not in line and not (tmp_path / "run").exists()


def test_resume_on_other_data_is_refused_unless_asked_for(small_text, trained, tmp_path):
    text = bytearray(open(small_text, "rb").read())
    j = next(j for j in range(101, len(text)) if text[j] != text[100])
    text[100], text[j] = text[j], text[100]  # the same characters, so the same vocabulary size
    other = tmp_path / "other.txt"
    other.write_bytes(bytes(text))
    for name in ("best.npz", "last.npz"):
        shutil.copy(trained / name, tmp_path / name)
    before = snapshot(tmp_path)
    args = [
        "with",
        "tiny",
        "dataset=chars",
        f"data_path={other}",
        "batch_size=16",
        "num_steps=10",
        "max_max_epoch=2",
        f"resume={tmp_path / 'last.npz'}",
    ]
    result = run_cli(*args)
    assert_one_line_error(
        result,
        f"last.npz was trained on other data than {other}",
        "data fingerprint",
        "set resume_other_data=True to continue on this data anyway",
    )
    assert snapshot(tmp_path) == before
    same = run_cli(*args, f"data_path={small_text}", f"save_dir={tmp_path / 'same'}")  # the run's own data: fine
    assert same.returncode == 0 and "other data; continuing" not in same.stdout, same.stderr[-2000:]
    result = run_cli(*args, "resume_other_data=True")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "was trained on other data; continuing" in result.stdout


# --- 8. stale temporaries ---------------------------------------------------------------------
def test_stale_temporaries_are_removed_at_the_next_start(small_text, tmp_path):
    dead = dead_pid()
    stale = [
        f".last.npz.{dead}.tmp",  # the form written before the host was in the name
        os.path.basename(temporary_path(tmp_path / "best.npz", pid=dead)),
        os.path.basename(temporary_path(tmp_path / "learning_curve.png", pid=dead)),
    ]
    kept = [
        os.path.basename(temporary_path(tmp_path / "last.npz", pid=os.getpid())),  # a live writer
        os.path.basename(temporary_path(tmp_path / "last.npz", pid=dead, host="another-host")),
        "notes.txt",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 1000)
    result = run_cli("with", *chars(small_text, tmp_path, "max_max_epoch=1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(snapshot(tmp_path)) == sorted(kept + ["best.npz", "last.npz"])
    for name in stale:
        assert f"Removed {tmp_path / name}: left by a process that is no longer running" in result.stdout


# --- 9. files that are not checkpoints --------------------------------------------------------
def test_text_file_as_resume_says_what_it_is_not(small_text, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("epoch 3 was good\n")
    result = run_cli("with", *chars(small_text, tmp_path / "run", f"resume={notes}"))
    assert_one_line_error(
        result, f"{notes} is not an .npz checkpoint (it is a text file)", "give a best.npz or last.npz written by rhn"
    )
    assert "allow_pickle" not in result.stdout + result.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, what",
    [
        (lambda path: np.save(path, np.arange(3)), "it is a single NumPy .npy array"),
        (lambda path: open(path, "wb").write(pickle.dumps({"epoch": 1})), "it looks like a Python pickle"),
        (lambda path: open(path, "wb").write(b""), "it is empty"),
        (lambda path: np.savez(path, a=np.array([{"x": 1}], dtype=object)), "it holds pickled Python objects"),
    ],
)
def test_other_files_say_what_they_are_not(tmp_path, content, what):
    path = str(tmp_path / f"{uuid.uuid4().hex}.npz")
    content(path)
    if os.path.isfile(path + ".npy"):
        os.replace(path + ".npy", path)
    with pytest.raises(RHNError) as e:
        load_checkpoint(path)
    assert what in str(e.value) and "allow_pickle" not in str(e.value)


def test_checkpoint_missing_a_state_key_names_it(small_text, trained, tmp_path):
    params, state = load_checkpoint(str(trained / "last.npz"))
    del state["rng"]
    save_checkpoint(str(tmp_path / "last.npz"), params, state)
    shutil.copy(trained / "best.npz", tmp_path / "best.npz")
    result = run_cli("with", *chars(small_text, tmp_path, f"resume={tmp_path / 'last.npz'}"))
    assert_one_line_error(
        result,
        "last.npz is not a complete training checkpoint: its training state lacks rng",
        "resume from a last.npz written by a run",
    )
    assert "KeyError" not in result.stderr
