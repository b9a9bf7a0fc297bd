"""One run, one writer: no result is ever silently mixed, duplicated or lost.

Real processes through the entry points: two runs on one folder (at once and one after the other),
signals (SIGHUP from a closing terminal, a second Ctrl-C while a checkpoint is written), output that
fails (a closed pipe, a full device), a resume with changed keys; and the property that the best
epoch is the one of the lowest validation perplexity.
"""

import fcntl
import hashlib
import json
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from conftest import REPO, assert_one_line_error, backend_params, run_cli, run_experiment
from rhn_core import loop
from rhn_core.checkpoint import load_checkpoint, read_state_entries
from rhn_core.distributed.world import detect
from rhn_core.runlock import RunLock, claim_default, holder_of


def tiny(small_text, *extra):
    return ["with", "tiny", "dataset=chars", f"data_path={small_text}", "threads=1", *extra]


def entry(backend="torch"):
    return [sys.executable, "-u", "-W", "ignore", os.path.join(REPO, f"rhn_train_{backend}.py")]


def digest(folder):
    """{name: sha256} of the files of a folder: 'untouched' means this is equal before and after."""
    return {
        n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
        for n in sorted(os.listdir(folder))
        if not n.startswith(".")
    }


def read_until(stream, marker, timeout=240):
    """Lines of ``stream`` up to the one holding ``marker`` (the process must print it within ``timeout``)."""
    deadline, seen = time.time() + timeout, []
    while time.time() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} not seen in time; output so far:\n{''.join(seen)}")


# --- two runs, one folder ---------------------------------------------------------------------
@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
@pytest.mark.parametrize("second", backend_params("torch", "tf"))
def test_second_run_on_a_busy_folder_is_refused_and_the_first_keeps_its_files(small_text, tmp_path, second):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    folder = tmp_path / "shared"
    first = subprocess.Popen(
        entry() + tiny(small_text, f"save_dir={folder}", "progress=False"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        read_until(first.stdout, "Backend:")  # it holds the folder from before its data is read
        first.send_signal(signal.SIGSTOP)  # and keeps holding it, however slow the second start is
        start = time.time()
        result = subprocess.run(
            entry(second) + tiny(small_text, f"save_dir={folder}", "depth=3"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        refused_after = time.time() - start
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    line = assert_one_line_error(result, f"{folder} is in use by training (pid {first.pid} on", "set save_dir=")
    assert "Backend:" not in result.stdout and refused_after < 120, refused_after  # before any work
    assert first.returncode == 0, err[-2000:]
    print(line, f"(refused after {refused_after:.1f} s, interpreter and {second} import included)")
    # The first run's files are its own: its depth (2) and one lineage; the final pass scored its best.npz.
    best, best_state = load_checkpoint(str(folder / "best.npz"))
    _, last_state = load_checkpoint(str(folder / "last.npz"))
    assert "RHN0/h_2/Matrix" not in best and "RHN0/h_1/Matrix" in best
    assert str(best_state["run_lineage"]) == str(last_state["run_lineage"])
    assert json.loads(str(last_state["config"]))["depth"] == 2
    assert sorted(os.listdir(folder)) == ["best.npz", "last.npz"]  # the lock file went with the run


@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
def test_runs_with_the_same_seed_one_after_the_other_keep_their_own_folders(small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    first = run_cli(*tiny(small_text, "seed=5", "max_max_epoch=1"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = digest(tmp_path / "runs" / "chars_5")
    assert set(kept) == {"best.npz", "last.npz"}
    second = run_cli(*tiny(small_text, "seed=5", "max_max_epoch=1", "depth=3"), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "checkpoints in runs/chars_5_2" in second.stdout  # the start line says where they go
    assert digest(tmp_path / "runs" / "chars_5") == kept
    assert "RHN0/h_2/Matrix" in load_checkpoint(str(tmp_path / "runs" / "chars_5_2" / "best.npz"))[0]
    # Naming the first run's folder explicitly is refused, and says how to continue that run instead.
    again = run_cli(*tiny(small_text, "seed=5", "save_dir=runs/chars_5"), cwd=tmp_path)
    assert_one_line_error(
        again,
        "runs/chars_5 holds another run's checkpoints (last.npz (1 epoch done), best.npz)",
        "resume=runs/chars_5/last.npz",
        before_config=True,
    )
    assert digest(tmp_path / "runs" / "chars_5") == kept
    # Other files (a sweep's log...) do not make a folder someone else's.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    own = run_cli(*tiny(small_text, "max_max_epoch=1", "save_dir=mine"), cwd=tmp_path)
    assert own.returncode == 0, own.stderr[-2000:]


def test_default_folders_are_claimed_one_per_run(tmp_path):
    base = str(tmp_path / "runs" / "chars_1")
    a, lock_a, _ = claim_default(base)
    b, lock_b, _ = claim_default(base)  # the first is held (a run that has not written yet): the next one
    assert (a, b) == (base, base + "_2")
    lock_b.release()
    c, lock_c, _ = claim_default(base)  # _2 is free and empty again: reused, never a third folder
    assert c == base + "_2"
    assert "training (pid" in holder_of(a)
    lock_a.release()
    lock_c.release()
    assert holder_of(a) is None and not os.path.exists(os.path.join(a, ".lock"))


def test_a_killed_holder_leaves_nothing_to_clean(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from rhn_core.runlock import RunLock; "
            f"lock = RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert holder.stdout.readline().strip() == "held"
    assert f"pid {holder.pid}" in holder_of(str(tmp_path))
    holder.kill()
    holder.wait()
    with RunLock(str(tmp_path)):  # the kernel released it with the process
        pass


@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
def test_mc_evaluation_is_refused_on_a_folder_a_run_writes(small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    trained = tmp_path / "run"
    assert run_cli(*tiny(small_text, "max_max_epoch=1", f"save_dir={trained}")).returncode == 0
    with RunLock(str(trained), "training"):
        result = run_cli("evaluate_mc", *tiny(small_text, f"load_model={trained / 'best.npz'}", "mc_steps=2"))
        assert_one_line_error(
            result, f"{trained} is in use by training (pid {os.getpid()}", "set save_dir=", before_config=True
        )
        # evaluate and sample only read whole files: they go on and say that the run is still writing
        scored = run_cli("evaluate", *tiny(small_text, f"load_model={trained / 'best.npz'}"))
        assert scored.returncode == 0 and f"belongs to training (pid {os.getpid()}" in scored.stdout


def test_a_refused_start_leaves_no_folder_behind(small_text, tmp_path):
    result = run_cli(*tiny(small_text, f"save_dir={tmp_path / 'new'}", f"resume={tmp_path / 'nowhere.npz'}"))
    assert_one_line_error(result, "nowhere.npz")
    assert not (tmp_path / "new").exists()
    result = run_cli(*tiny(str(tmp_path / "no_such_text"), f"save_dir={tmp_path / 'new'}"))
    assert result.returncode == 1 and not (tmp_path / "new").exists()
    # nor the parents it created: save_dir=new/run, or the default runs/chars_<seed> (runs/ too)
    result = run_cli(*tiny(str(tmp_path / "no_such_text"), f"save_dir={tmp_path / 'new' / 'run'}"))
    assert result.returncode == 1 and not (tmp_path / "new").exists()
    (tmp_path / "here").mkdir()
    result = run_cli(*tiny(str(tmp_path / "no_such_text")), cwd=tmp_path / "here")
    assert result.returncode == 1 and os.listdir(tmp_path / "here") == []


# --- signals ------------------------------------------------------------------------------------
def in_a_terminal(argv, cwd):
    """Start ``argv`` in a new session whose controlling terminal is a pty: closing the master side is a
    terminal (or SSH session) going away; the kernel then sends SIGHUP and later writes fail."""
    master, slave = pty.openpty()

    def own_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, preexec_fn=own_terminal)
    os.close(slave)
    return proc, master


def read_pty_until(master, marker, timeout=240):
    seen, deadline = b"", time.time() + timeout
    while marker.encode() not in seen and time.time() < deadline:
        if select.select([master], [], [], 1)[0]:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    assert marker.encode() in seen, seen.decode(errors="replace")[-3000:]


@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
def test_closing_the_terminal_saves_like_sigterm_and_the_run_resumes(small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    runs = tmp_path / "sacred"
    proc, master = in_a_terminal(
        entry() + ["-F", str(runs)] + tiny(small_text, "save_dir=ckpt", "max_max_epoch=200", "progress=False"), tmp_path
    )
    read_pty_until(master, "Epoch: 2 Learning rate")
    time.sleep(0.5)
    os.close(master)  # the terminal is gone
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP
    state = read_state_entries(str(tmp_path / "ckpt" / "last.npz"), ["epoch", "step"])
    assert state["epoch"] >= 2 and state["step"] > 0  # the partial epoch is kept
    record = json.loads((runs / "1" / "run.json").read_text())
    assert record["status"] == "INTERRUPTED"  # not RUNNING forever
    assert not os.path.exists(tmp_path / "ckpt" / ".lock")
    resumed = run_cli(
        "-F", str(runs), *tiny(small_text, "resume=ckpt", "max_max_epoch=" + str(state["epoch"])), cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from ckpt/last.npz: epoch {state['epoch']}, step {state['step']}" in resumed.stdout
    assert f"(resumed at step {state['step']})" in resumed.stdout  # the learning-rate line of a partial epoch too


SLOW_SAVE = """
import os, signal, sys
import numpy as np
real = np.savez
def savez(f, **arrays):
    if "train_state/hidden" in arrays:  # the checkpoint of a Ctrl-C inside an epoch: Ctrl-C again, half-way
        f.write(b"PK\\x03\\x04 half a checkpoint")
        os.kill(os.getpid(), signal.SIGINT)
    real(f, **arrays)
np.savez = savez
sys.argv = sys.argv[1:]
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
def test_second_ctrl_c_while_saving_names_the_whole_checkpoint_in_one_line(small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    folder = tmp_path / "a b"  # a path with a space: the line's resume= argument pastes back whole
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE)
    proc = subprocess.Popen(
        [sys.executable, "-u", "-W", "ignore", str(script), os.path.join(REPO, "rhn_train_torch.py")]
        + tiny(small_text, f"save_dir={folder}", "max_max_epoch=200", "progress=False"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    read_until(proc.stdout, "Epoch: 2 Learning rate")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "Ctrl-C" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"TrainingInterrupted: aborted by a second Ctrl-C while its checkpoint was being "
        f"written; {folder / 'last.npz'} on disk is whole ("
    )
    assert sorted(os.listdir(folder)) == ["best.npz", "last.npz"]  # the half-written one is gone
    state = read_state_entries(str(folder / "last.npz"), ["epoch", "step"])
    assert state["step"] == 0 and f"({state['epoch'] - 1} epoch" in lines[0]
    hint = lines[0].split("continue with ")[1]
    assert hint == shlex.quote(f"resume={folder / 'last.npz'}")
    resumed = run_cli(*tiny(small_text, *shlex.split(hint), f"max_max_epoch={state['epoch']}"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]


# --- output that fails --------------------------------------------------------------------------
@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
def test_a_closed_pipe_stops_the_printing_not_the_training(small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    # python rhn_train_torch.py ... | head: the reader goes away while the run trains its first epoch
    proc = subprocess.Popen(
        entry() + tiny(small_text, f"save_dir={tmp_path}", "max_max_epoch=3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    read_until(proc.stdout, "Epoch: 1 Learning rate")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.count("Output to stdout failed (Broken pipe)") == 1, err
    assert read_state_entries(str(tmp_path / "last.npz"), ["epoch", "step"]) == {"epoch": 4, "step": 0}


@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
@pytest.mark.parametrize("capture", ["fd", "sys"])
def test_a_full_output_device_stops_the_printing_not_the_training(small_text, tmp_path, capture):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            entry() + [f"--capture={capture}"] + tiny(small_text, f"save_dir={tmp_path}"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    # one line says it: ours, or (capture=fd, output written as it comes) that of Sacred's tee, which writes stdout
    assert [line for line in result.stderr.splitlines() if "No space left on device" in line] in (
        ["Output to stdout failed (No space left on device): no more printing there; training and checkpoints go on"],
        ["tee: 'standard output': No space left on device"],
    ), result.stderr
    assert read_state_entries(str(tmp_path / "last.npz"), ["epoch", "step"]) == {"epoch": 3, "step": 0}


# --- resume with changed keys -------------------------------------------------------------------
@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
def test_resume_with_changed_keys_says_so_and_records_it(small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    runs = tmp_path / "sacred"
    first = run_cli(
        "-F", str(runs), *tiny(small_text, "max_max_epoch=1", "learning_rate=0.5", "save_dir=ckpt"), cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_cli(
        "-F",
        str(runs),
        *tiny(small_text, "resume=ckpt/last.npz", "max_max_epoch=2", "learning_rate=0.3", "progress=True"),
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    notes = [line for line in resumed.stdout.splitlines() if line.startswith("Changed since the checkpoint")]
    assert notes == [
        "Changed since the checkpoint: learning_rate 0.5 -> 0.3",
        "Changed since the checkpoint: max_max_epoch 1 -> 2",
    ]  # progress= is no change to training
    info = json.loads((runs / "2" / "info.json").read_text())
    assert info["resumed_with_changes"] == {"learning_rate": [0.5, 0.3], "max_max_epoch": [1, 2]}
    assert "resumed_with_changes" not in json.loads((runs / "1" / "info.json").read_text())
    _, state = load_checkpoint(str(tmp_path / "ckpt" / "last.npz"))
    assert json.loads(str(state["config"]))["learning_rate"] == 0.3  # what trained epoch 2


# --- the best epoch -----------------------------------------------------------------------------
def test_best_epoch_is_the_one_of_the_lowest_validation_perplexity(small_text, tmp_path, monkeypatch):
    """Validation and test disagree on purpose: valid is lowest after epoch 2, test after epochs 1 and 3."""
    pytest.importorskip("torch")  # the runs here train with the torch backend
    valid, test = {1: 50.0, 2: 30.0, 3: 40.0}, {1: 10.0, 2: 60.0, 3: 5.0}
    weights, scored = {}, []

    def batched(self, split):
        epoch = len(weights) + (split == "valid")
        if split == "valid":
            weights[epoch] = self.backend.get_params()  # what this epoch's evaluation sees
        return (valid if split == "valid" else test)[epoch]

    real_full = loop.Evaluator.full

    def full(self, split):
        scored.append(self.backend.get_params())
        return real_full(self, split)

    monkeypatch.setattr(loop.Evaluator, "batched", batched)
    monkeypatch.setattr(loop.Evaluator, "full", full)
    run = run_experiment(
        named=["tiny"], dataset="chars", data_path=small_text, max_max_epoch=3, threads=1, save_dir=str(tmp_path)
    )
    best, state = load_checkpoint(str(tmp_path / "best.npz"))
    assert int(state["best_epoch"]) == 2 and float(state["valid_perplexity"]) == 30.0
    for name in best:
        np.testing.assert_array_equal(best[name], weights[2][name])
    assert any(not np.array_equal(weights[2][n], weights[3][n]) for n in best)  # epoch 3 is not epoch 2
    assert len(scored) == 2  # full valid and full test, both of best.npz's weights
    for params in scored:
        for name in best:
            np.testing.assert_array_equal(params[name], best[name])
    assert (run.info["best_val_epoch"], run.info["best_valid_perplexity"]) == (2, 30.0)
    assert run.result == 30.0


# --- smaller points -----------------------------------------------------------------------------
@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
def test_resume_of_a_folder_takes_its_last_checkpoint(small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    assert run_cli(*tiny(small_text, "max_max_epoch=1", f"save_dir={tmp_path / 'run'}")).returncode == 0
    more = run_cli(*tiny(small_text, f"resume={tmp_path / 'run'}"))
    assert more.returncode == 0 and f"Resuming from {tmp_path / 'run' / 'last.npz'}: epoch 2" in more.stdout
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        run_cli(*tiny(small_text, f"resume={tmp_path / 'empty'}")), "is a folder without a last.npz: give the last.npz"
    )


def test_srun_ranks_are_named_srun_every_time_they_are_read():
    environ = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1", "MASTER_ADDR": "node1"}
    assert detect("torch", environ).launcher == "srun"
    assert environ["RANK"] == "1" and environ["WORLD_SIZE"] == "2"  # for torch.distributed's rendezvous
    assert detect("torch", environ).launcher == "srun"  # not torchrun, although RANK is set now
    torchrun = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    assert detect("torch", torchrun).launcher == "torchrun"  # torchrun inside a Slurm job
