"""The code that decides what is stored and resumed, called in process.

The end-to-end tests reach most of this through the entry points (a subprocess per run, per
sweep, per rank); these tests call the same functions directly, each on what a run would give
them, so that a wrong comparison, a dropped field or an off-by-one shows here in a second
(and so that ``tools/mutation.py`` can see them: its mutants live in the test process only).
"""

import datetime
import json
import os
import socket
import zipfile

import numpy as np
import pytest

from rhn_core.atomic import temporary_path
from rhn_core.checkpoint import (
    check_writable,
    load_checkpoint,
    read_state_entries,
    remove_stale_temporaries,
    save_checkpoint,
)
from rhn_core.errors import RHNError
from rhn_core.runlock import (
    LOCK_NAME,
    RunFolder,
    RunLock,
    checkpoints_in,
    claim_default,
    default_base,
    describe_holder,
    holder_of,
    note_writer,
    missing_folders,
    only_lock_left,
    shell_arg,
)


def dead_pid():
    """A pid no process has now (one that has just exited)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- checkpoint.py --------------------------------------------------------------------------------
def test_checkpoint_round_trip_keeps_names_values_and_state_types(tmp_path):
    path = str(tmp_path / "last.npz")
    params = {"W_embed": np.arange(6.0).reshape(2, 3), "b": np.float32([1.5, -2.0])}
    state = {"epoch": 3, "lr": 0.25, "config": {"depth": 2, "name": "x"}, "rng": np.array([1, 2, 3])}
    save_checkpoint(path, params, state)
    loaded, loaded_state = load_checkpoint(path)
    assert sorted(loaded) == ["W_embed", "b"] and sorted(loaded_state) == ["config", "epoch", "lr", "rng"]
    for name, value in params.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype
    assert int(loaded_state["epoch"]) == 3 and float(loaded_state["lr"]) == 0.25
    assert json.loads(str(loaded_state["config"])) == {"depth": 2, "name": "x"}  # a dict is stored as JSON
    np.testing.assert_array_equal(loaded_state["rng"], [1, 2, 3])
    with zipfile.ZipFile(path) as z:  # state entries under their prefix, parameters under their own names
        assert sorted(z.namelist()) == sorted(
            ["W_embed.npy", "b.npy"] + [f"train_state/{k}.npy" for k in ("config", "epoch", "lr", "rng")]
        )
    assert [n for n in os.listdir(tmp_path)] == ["last.npz"]  # no temporary left behind


def test_checkpoint_without_training_state(tmp_path):
    path = str(tmp_path / "best.npz")
    save_checkpoint(path, {"w": np.ones(2)})
    params, state = load_checkpoint(path)
    assert list(params) == ["w"] and state == {}


def test_read_state_entries_reads_scalars_and_arrays_and_skips_what_is_missing(tmp_path):
    path = str(tmp_path / "last.npz")
    save_checkpoint(path, {"w": np.ones(2)}, {"epoch": 4, "step": 0, "curve": np.array([1.0, 2.0])})
    found = read_state_entries(path, ["epoch", "step", "curve", "absent", "w"])
    assert found.keys() == {"epoch", "step", "curve"}  # "w" is a parameter, not a state entry
    assert found["epoch"] == 4 and isinstance(found["epoch"], int) and found["step"] == 0
    np.testing.assert_array_equal(found["curve"], [1.0, 2.0])
    (tmp_path / "junk.npz").write_text("not a zip")
    assert read_state_entries(str(tmp_path / "junk.npz"), ["epoch"]) == {}
    assert read_state_entries(str(tmp_path / "missing.npz"), ["epoch"]) == {}


@pytest.mark.parametrize(
    "head, what",
    [
        (b"epoch 3 was good\n", "it is a text file"),
        (b"\xff\xfe\x00binary", "it is not a zip archive"),
        (b"\x80\x04\x95", "it looks like a Python pickle"),
        (b"", "it is empty"),
        (b"\x93NUMPY\x01\x00", "it is a single NumPy .npy array"),
    ],
)
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, head, what):
    path = tmp_path / "resume.npz"
    path.write_bytes(head)
    advice = "give a best.npz or last.npz written by rhn (python -m rhn_core.convert_tf1 converts the original's)"
    with pytest.raises(RHNError) as e:
        load_checkpoint(str(path))
    assert str(e.value).startswith(f"{path} is not an .npz checkpoint ({what}") and str(e.value).endswith(f": {advice}")


def test_missing_or_truncated_checkpoints_are_clear_errors(tmp_path):
    for path in ("", str(tmp_path / "nowhere.npz"), str(tmp_path)):
        with pytest.raises(RHNError, match="not found: give the path of a .npz written by a run"):
            load_checkpoint(path)
    whole = tmp_path / "last.npz"
    save_checkpoint(str(whole), {"w": np.arange(1000.0)}, {"epoch": 1})
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[:600])
    with pytest.raises(RHNError, match="not a complete .npz .*truncated or damaged"):
        load_checkpoint(str(cut))
    empty_zip = tmp_path / "empty.npz"
    zipfile.ZipFile(empty_zip, "w").close()  # starts with the end-of-archive magic: a zip with nothing in it
    assert load_checkpoint(str(empty_zip)) == ({}, {})


def test_stale_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    import subprocess
    import sys

    dead = dead_pid()
    # default signal handling (a run under nohup ignores SIGHUP): any signal sent to it would end it
    code = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); print(flush=True); time.sleep(60)"
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    writer.stdout.readline()
    stale = [
        f".last.npz.{dead}.tmp",  # the form written before the host was in the name
        os.path.basename(temporary_path(tmp_path / "best.npz", pid=dead)),
        os.path.basename(temporary_path(tmp_path / "learning_curve.png", pid=dead)),
        # this process's pid: a file of an earlier process with that pid (this one has written nothing yet)
        os.path.basename(temporary_path(tmp_path / "last.npz", pid=os.getpid())),
    ]
    kept = [
        os.path.basename(temporary_path(tmp_path / "last.npz", pid=writer.pid)),  # a live writer
        os.path.basename(temporary_path(tmp_path / "last.npz", pid=dead, host="another-host")),
        f".notes.txt.{dead}.tmp",  # not a file rhn writes
        f"last.npz.{dead}.tmp",
        "notes.txt",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path))
    assert removed == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    with pytest.raises(subprocess.TimeoutExpired):  # asked whether it runs, nothing else (signal 0)
        writer.wait(timeout=0.5)
    writer.kill()
    writer.wait()
    assert remove_stale_temporaries(str(tmp_path / "nowhere")) == []


def test_temporary_of_another_users_live_process_is_kept(tmp_path, monkeypatch):
    import rhn_core.checkpoint as checkpoint

    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    name = os.path.basename(temporary_path(tmp_path / "last.npz", pid=os.getpid() + 1))
    (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr(checkpoint.os, "kill", not_permitted)
    assert remove_stale_temporaries(str(tmp_path)) == [] and os.listdir(tmp_path) == [name]


def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    folder = tmp_path / "a" / "b"
    check_writable(str(folder))
    assert folder.is_dir() and os.listdir(folder) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(RHNError, match=r"cannot write checkpoints to .*file/run .*: set out_dir= to a writable"):
        check_writable(str(tmp_path / "file" / "run"), key="out_dir")
    with pytest.raises(RHNError, match=r": set save_dir= to a writable folder$"):
        check_writable(str(tmp_path / "file" / "run"))


def test_check_writable_writes_in_the_folder_itself():
    """A folder that exists but takes no new file (proc, read-only even for root): refused at the start."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    with pytest.raises(RHNError, match="cannot write checkpoints to /proc/self "):
        check_writable("/proc/self")


# --- runlock.py -----------------------------------------------------------------------------------
def test_lock_is_exclusive_names_its_holder_and_is_freed_by_release(tmp_path):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    first = RunLock(folder, "training").acquire()
    text = open(os.path.join(folder, LOCK_NAME)).read()
    assert text.startswith(f"host={socket.gethostname()} pid={os.getpid()} started=") and text.endswith(
        " command=training\n"
    )
    started = datetime.datetime.fromisoformat(text.split("started=")[1].split()[0])
    assert started.tzinfo is not None and abs(datetime.datetime.now(datetime.timezone.utc) - started).seconds < 60
    holder = holder_of(folder)
    assert holder.startswith(f"training (pid {os.getpid()} on {socket.gethostname()}, started ")
    assert "T" not in holder.split("started ")[1]  # the ISO stamp is printed with a space
    with pytest.raises(RHNError, match=f"{folder} is in use by training \\(pid {os.getpid()}.*set out_dir= to"):
        RunLock(folder, "evaluate_mc", key="out_dir").acquire()
    assert RunLock(folder).try_acquire() == text
    first.release()
    first.release()  # twice is harmless
    assert holder_of(folder) is None and not os.path.exists(os.path.join(folder, LOCK_NAME))
    with RunLock(folder, "evaluate_mc") as second:
        assert "evaluate_mc (pid" in holder_of(folder) and second.fd is not None
    assert holder_of(folder) is None


def test_lock_file_left_by_a_dead_holder_is_free(tmp_path):
    (tmp_path / LOCK_NAME).write_text("host=h pid=1 started=x command=training\n")
    assert holder_of(str(tmp_path)) is None  # nobody holds the flock
    lock = RunLock(str(tmp_path), "sample").acquire()
    assert (tmp_path / LOCK_NAME).read_text().endswith(" command=sample\n")  # rewritten, not appended
    lock.release()


def test_lock_dropped_without_release_closes_its_descriptor(tmp_path):
    lock = RunLock(str(tmp_path)).acquire()
    fd = lock.fd
    del lock
    with pytest.raises(OSError):
        os.fstat(fd)
    assert holder_of(str(tmp_path)) is None


def test_lock_in_an_unwritable_place_is_a_clear_error(tmp_path):
    with pytest.raises(RHNError, match=r"cannot write in .*nowhere .*: set save_dir= to a writable folder"):
        RunLock(str(tmp_path / "nowhere")).acquire()


def test_describe_holder_of_a_lock_file_being_written():
    assert describe_holder("") == "another process that is starting now"
    assert describe_holder("host=h started=s") == "another process that is starting now"
    assert describe_holder("pid=7") == "a run (pid 7 on ?, started ?)"
    line = "host=n1 pid=42 started=2026-01-02T03:04:05+00:00 command=evaluate_mc x"
    assert describe_holder(line) == "evaluate_mc (pid 42 on n1, started 2026-01-02 03:04:05+00:00)"


def test_small_helpers_of_the_run_folder(tmp_path, capsys):
    assert shell_arg("save_dir", "my runs/a") == "'save_dir=my runs/a'"
    assert default_base({"dataset": "ptb", "seed": 7}) == os.path.join("runs", "ptb_7")
    assert checkpoints_in(str(tmp_path)) == [] and only_lock_left(str(tmp_path))
    (tmp_path / LOCK_NAME).write_text("")
    (tmp_path / ".last.npz.h.1.tmp").write_text("")
    assert only_lock_left(str(tmp_path))
    (tmp_path / "best.npz").write_text("")
    (tmp_path / "sweep.json").write_text("")
    assert checkpoints_in(str(tmp_path)) == ["best.npz"] and not only_lock_left(str(tmp_path))
    (tmp_path / "last.npz").write_text("")
    assert checkpoints_in(str(tmp_path)) == ["last.npz", "best.npz"]
    assert not only_lock_left(str(tmp_path / "nowhere"))
    note_writer(str(tmp_path / "best.npz"), "scoring")
    assert capsys.readouterr().out == ""  # nobody writes it
    with RunLock(str(tmp_path), "training"):
        note_writer(str(tmp_path / "best.npz"), "scoring")
    out = capsys.readouterr().out
    assert out.startswith(f"Note: {tmp_path / 'best.npz'} belongs to training (pid {os.getpid()}")
    assert out.endswith("which is still writing; scoring the file as it is now\n")


def test_default_folder_skips_used_ones_and_reuses_an_empty_one(tmp_path):
    base = str(tmp_path / "runs" / "chars_1")
    os.makedirs(base)
    (tmp_path / "runs" / "chars_1" / "last.npz").write_text("")  # a finished run: never reused
    os.makedirs(base + "_2")  # an empty folder: reused
    folder, lock, _ = claim_default(base, "sample")  # (the third: what it created, RunFolder reads it)
    assert folder == base + "_2" and "sample (pid" in holder_of(folder)
    other, other_lock, _ = claim_default(base)
    assert other == base + "_3" and os.path.isdir(other)
    lock.release()
    other_lock.release()


def test_default_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(RHNError, match=r"cannot create .*runs/ptb_1 .*: set save_dir= to a writable folder"):
        claim_default(str(tmp_path / "runs" / "ptb_1"))


def test_run_folder_claimed_then_abandoned_leaves_no_trace(tmp_path):
    new = RunFolder.claim(str(tmp_path / "new"))
    assert new.created and new.path == str(tmp_path / "new") and holder_of(new.path)
    new.abandon()
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    old = RunFolder.claim(str(tmp_path / "old"), command="evaluate_mc", key="out_dir")
    assert not old.created and "evaluate_mc (pid" in holder_of(old.path)
    with pytest.raises(RHNError, match="is in use by evaluate_mc .* set out_dir= to another folder"):
        RunFolder.claim(str(tmp_path / "old"), key="out_dir")
    old.abandon()
    assert (tmp_path / "old").is_dir() and holder_of(old.path) is None  # it existed: left as it was
    written = RunFolder.claim(str(tmp_path / "written"))
    (tmp_path / "written" / "last.npz").write_text("")
    written.abandon()
    assert (tmp_path / "written" / "last.npz").exists()  # it wrote a file: kept
    default = RunFolder.claim("", base=str(tmp_path / "runs" / "ptb_1"))
    assert default.path == str(tmp_path / "runs" / "ptb_1") and default.created
    default.release()
    assert holder_of(default.path) is None and (tmp_path / "runs" / "ptb_1").is_dir()


def test_run_folder_refused_by_its_holder_removes_the_folder_it_created(tmp_path):
    held = RunLock(str(tmp_path / "busy"))
    os.makedirs(tmp_path / "busy")
    held.acquire()
    with pytest.raises(RHNError, match="is in use by"):
        RunFolder.claim(str(tmp_path / "busy"))
    assert (tmp_path / "busy").is_dir()  # it existed before
    held.release()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RHNError, match=r"cannot write checkpoints to .*file/run .*: set save_dir= to a writable"):
        RunFolder.claim(str(tmp_path / "file" / "run"))


def test_lock_taken_while_the_holder_removes_the_file_locks_the_new_one(tmp_path, monkeypatch):
    """A waiter that opened the old lock file just before its holder removed it must not keep that file."""
    first = RunLock(str(tmp_path)).acquire()
    real_flock = __import__("fcntl").flock
    calls = []

    def flock_after_release(fd, op):
        if not calls:  # the holder releases (and removes the file) between our open and our flock
            calls.append(fd)
            first.release()
        return real_flock(fd, op)

    monkeypatch.setattr("rhn_core.runlock.fcntl.flock", flock_after_release)
    second = RunLock(str(tmp_path), "sample").acquire()
    assert os.fstat(second.fd).st_ino == os.stat(tmp_path / LOCK_NAME).st_ino
    assert (tmp_path / LOCK_NAME).read_text().endswith("command=sample\n")
    second.release()


# --- tracking/observer.py: the writer thread's outage handling, against a store that can fail -------------
class FlakyStore:
    """RunStore's interface in memory; ``up = False`` makes every write fail as a lost server does."""

    def __init__(self):
        self.up, self.entries, self.metrics, self.files, self.deleted, self.next_id = True, {}, {}, {}, [], 1
        self.runs = type("Collection", (), {"name": "runs"})()

    def _check(self):
        from pymongo.errors import AutoReconnect

        if not self.up:
            raise AutoReconnect("connection refused")

    def put_artifact(self, run_id, name, path, content_type=None, metadata=None):
        self._check()
        file_id, self.next_id = self.next_id, self.next_id + 1
        self.files[file_id] = (name, open(path, "rb").read(), content_type, metadata)
        return file_id

    def write_metric(self, run_id, metric_id, name, series):
        self._check()
        self.metrics[name] = (run_id, metric_id, list(series["steps"]), list(series["values"]))

    def write_entry(self, run_id, entry):
        self._check()
        self.entries[run_id] = json.loads(json.dumps(entry, default=str))

    def delete_files(self, file_ids):
        self._check()
        self.deleted.extend(file_ids)
        for file_id in file_ids:
            self.files.pop(file_id)


def flaky_observer(tmp_path):
    from rhn_core.tracking.mongo import parse_target
    from rhn_core.tracking.observer import MongoRunObserver

    obs = MongoRunObserver(parse_target("localhost:1:rhn_test"), spool_dir=str(tmp_path / "spool"))
    obs.store, obs.run_id = FlakyStore(), 7
    obs.client = type("Client", (), {"close": lambda self: setattr(self, "closed", True)})()
    obs.entry = {"experiment": {"sources": [["a.py", "id1"]]}, "status": "RUNNING", "info": {}, "resources": []}
    obs.entry.update(config={"seed": 1}, captured_out="", heartbeat=None)
    return obs


def test_observer_keeps_the_run_on_disk_while_the_server_is_away_and_writes_it_whole_when_back(tmp_path, capsys):
    obs = flaky_observer(tmp_path)
    store, spool = obs.store, tmp_path / "spool" / "mongo_7"
    ckpt = tmp_path / "last.npz"
    ckpt.write_bytes(b"epoch 1")
    info = {}
    obs.log_metrics({"valid_perplexity": {"steps": [1], "values": [50], "timestamps": ["t1"]}}, info)
    obs.artifact_event("last.npz", str(ckpt))
    assert info["metrics"] == [{"name": "valid_perplexity", "id": str(obs.series["valid_perplexity"]["id"])}]
    assert obs._write() and store.entries[7]["artifacts"] == [{"name": "last.npz", "file_id": 1}]
    assert store.metrics["valid_perplexity"][2:] == ([1], [50.0]) and store.files[1][:2] == ("last.npz", b"epoch 1")
    assert capsys.readouterr().err == ""

    store.up = False  # the server goes away: epoch 2 is kept in the spool folder
    ckpt.write_bytes(b"epoch 2")
    obs.log_metrics({"valid_perplexity": {"steps": [2], "values": [40], "timestamps": ["t2"]}}, info)
    obs.artifact_event("last.npz", str(ckpt))
    obs.heartbeat_event({"epoch": 2}, "Epoch: 2\n", "beat", None)
    assert not obs._write()
    obs._spool()
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and f"kept meanwhile in {tmp_path / 'spool' / 'mongo_7'}" in err
    assert not obs._write() and capsys.readouterr().err == ""  # said once per outage
    obs._spool()
    assert json.loads((spool / "metrics.json").read_text())["valid_perplexity"]["values"] == [50, 40]
    assert (spool / "last.npz").read_bytes() == b"epoch 2" and json.loads((spool / "info.json").read_text()) == {
        "epoch": 2
    }
    kept = json.loads((spool / "mongo.json").read_text())  # what the upload tool needs to store it later
    assert kept == {
        "run_id": 7,
        "database": "rhn_test",
        "address": "mongodb://localhost:1",
        "sources": [["a.py", "id1"]],
    }
    assert json.loads((spool / "run.json").read_text())["experiment"]["sources"] == [["a.py", "id1"]]
    assert store.metrics["valid_perplexity"][2] == [1] and store.files[1][1] == b"epoch 1"  # nothing half-written

    store.up = True  # back: the whole run is written, the old checkpoint's file deleted, the spool dropped
    assert obs._write()
    assert "is back: run 7 is stored in full" in capsys.readouterr().err
    obs._drop_spool()
    assert not spool.exists() and obs._spooled is None
    obs._spooled = str(spool)  # removed meanwhile (the upload tool stored it): nothing to complain about
    obs._drop_spool()
    assert store.metrics["valid_perplexity"][2:] == ([1, 2], [50.0, 40.0])
    assert store.entries[7]["artifacts"] == [{"name": "last.npz", "file_id": 2}] and store.deleted == [1]
    assert store.files[2][1] == b"epoch 2" and store.entries[7]["info"] == {"epoch": 2}
    assert store.entries[7]["heartbeat"] == "beat" and store.entries[7]["captured_out"] == "Epoch: 2\n"
    assert obs._write() and store.deleted == [1]  # nothing new: nothing written or deleted again


def test_observer_end_of_run_written_by_its_thread_or_kept_on_disk(tmp_path, capsys, monkeypatch):
    import threading

    from rhn_core.tracking import observer

    obs = flaky_observer(tmp_path)
    obs._writer = threading.Thread(target=obs._write_loop, daemon=True)
    obs._writer.start()
    obs.completed_event("stop", 12.5)
    obs.join()
    assert obs.store.entries[7]["status"] == "COMPLETED" and obs.store.entries[7]["result"] == 12.5
    assert obs.client.closed and capsys.readouterr().err == ""

    late = flaky_observer(tmp_path)  # the server away at the end: the run stays on disk, and says how to upload it
    late.store.up = False
    late._writer = threading.Thread(target=late._write_loop, daemon=True)
    late._writer.start()
    late.failed_event("stop", ["Traceback"])
    late.join()
    err = capsys.readouterr().err
    assert "still away at the end of run 7" in err and "python -m rhn_core.tracking.upload" in err
    assert json.loads((tmp_path / "spool" / "mongo_7" / "run.json").read_text())["status"] == "FAILED"

    stuck = flaky_observer(tmp_path / "stuck")  # no answer at all within the final wait
    monkeypatch.setattr(observer, "FINAL_WAIT_S", 0.01)
    stuck.interrupted_event("stop", "INTERRUPTED")
    err = capsys.readouterr().err
    assert "did not take the end of run 7 within 0.01 s" in err
    assert json.loads((tmp_path / "stuck" / "spool" / "mongo_7" / "run.json").read_text())["status"] == "INTERRUPTED"


def test_observer_resources_and_a_vanished_artifact(tmp_path, capsys):
    from rhn_core.tracking.observer import md5_of

    obs = flaky_observer(tmp_path)
    data = tmp_path / "data.txt"
    data.write_text("abc")
    obs.resource_event(str(data))
    obs.resource_event(str(data))  # once
    assert obs.entry["resources"] == [[str(data), "900150983cd24fb0d6963f7d28e17f72"]] == [[str(data), md5_of(data)]]
    obs.artifact_event("curve.png", str(tmp_path / "gone.png"))
    assert obs.artifacts["curve.png"].content_type == "image/png"
    assert obs._write() and "artifact curve.png not stored" in capsys.readouterr().err
    assert obs.store.entries[7]["artifacts"] == []
    assert obs == obs and obs != flaky_observer(tmp_path)


def test_lock_defaults_file_mode_and_an_unreadable_holder_line(tmp_path, monkeypatch):
    """The lock file is readable by others (holder_of of another user), as a new file is (0o666 less the umask)."""
    umask = os.umask(0o022)
    try:
        lock = RunLock(str(tmp_path)).acquire()
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / LOCK_NAME).st_mode & 0o777 == 0o644
    assert holder_of(str(tmp_path)).startswith("training (pid")  # the default command
    lock.release()
    never = RunLock(str(tmp_path))
    (tmp_path / LOCK_NAME).write_text("someone else's")
    never.release()  # never acquired: nothing to remove or close
    assert (tmp_path / LOCK_NAME).read_text() == "someone else's"
    # a holder line with bytes that are not UTF-8 (cut in the middle of a character) still names its holder
    (tmp_path / LOCK_NAME).write_bytes("host=nœud pid=9 command=x".encode() + b"\xc5")
    import fcntl

    fd = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert holder_of(str(tmp_path)) == "x\ufffd (pid 9 on nœud, started ?)"
    finally:
        os.close(fd)


def test_describe_holder_keeps_an_equals_sign_in_a_value():
    assert describe_holder("pid=3 host=h started=s command=sample temperature=0.5") == (
        "sample (pid 3 on h, started s)"
    )
    assert describe_holder("pid=3 command=run=2") == "run=2 (pid 3 on ?, started ?)"


def test_run_folder_default_names_its_command(tmp_path, monkeypatch):
    plain = RunFolder.claim(str(tmp_path / "plain"))
    assert holder_of(plain.path).startswith("training (pid")
    plain.release()
    default = RunFolder.claim("", base=str(tmp_path / "runs" / "ptb_1"), command="sample")
    assert holder_of(default.path).startswith("sample (pid")
    default.release()

    def refused(self):
        raise RHNError("refused")

    monkeypatch.setattr(RunLock, "acquire", refused)  # a run that takes the new folder first
    with pytest.raises(RHNError, match="refused"):
        RunFolder.claim(str(tmp_path / "raced"))
    assert not (tmp_path / "raced").exists()  # created by this claim: removed again


# --- sweep/state.py -------------------------------------------------------------------------------------
def sweep_piece(folder, run_id, key, status, heartbeat=None, sweep="s"):
    """A run of a sweep as the file observer writes it (``heartbeat``: an ISO time)."""
    d = folder / str(run_id)
    d.mkdir(parents=True)
    meta = {"sweep": {"name": sweep, "key": key, "values": {}}}
    (d / "run.json").write_text(json.dumps({"status": status, "heartbeat": heartbeat, "meta": meta}))


def test_sweep_state_reads_times_in_any_zone_and_the_stale_boundary():
    from rhn_core.sweep import state

    now = datetime.datetime(2026, 1, 1, 10, 0, 30, tzinfo=datetime.timezone.utc)
    beat = {"status": "RUNNING", "heartbeat": "2026-01-01T12:00:00+02:00"}  # 10:00:00 UTC, written in +02:00
    assert state.heartbeat_age(beat, now) == 30.0
    assert state.state([beat], stale_s=30, now=now) == ("RUNNING", "skip")  # exactly stale_s: still alive
    assert state.state([beat], stale_s=29, now=now) == ("RUNNING (silent 30 s)", "resume")
    assert state.state([{}]) == ("UNKNOWN", "resume")  # a piece without a status: resumed, shown as unknown


def test_sweep_pieces_are_ordered_by_id_whatever_the_database_numbers_them():
    from rhn_core.sweep import state

    runs = [{"id": i, "meta": {"sweep": {"key": "k"}}} for i in (10, "b", 2, "a")] + [{"id": 1, "meta": {}}]
    assert [r["id"] for r in state.pieces_by_key(runs)["k"]] == [2, 10, "a", "b"]


def test_sweep_book_decides_from_the_pieces_of_its_own_sweep(tmp_path, monkeypatch):
    import rhn_core.tracking.sources as sources
    from rhn_core.sweep import state

    db, save_dir = tmp_path / "db", tmp_path / "k"
    sweep_piece(db, 1, "k", "FAILED")
    sweep_piece(db, 2, "k", "RUNNING", "2026-01-01T10:00:00+00:00")
    sweep_piece(db, 3, "k", "COMPLETED", sweep="other")  # the same key in another sweep: not this run
    book = state.Book("s", file_storage=str(db), stale_s=60)
    assert sorted(book.groups()) == ["k"] and len(book.groups()["k"]) == 2
    save_dir.mkdir()
    (save_dir / "last.npz").write_bytes(b"x")
    early = datetime.datetime(2026, 1, 1, 10, 0, 30, tzinfo=datetime.timezone.utc)
    assert book.decide("k", str(save_dir), now=early) == ("RUNNING", "skip", "")  # no resume source to skip
    late = early + datetime.timedelta(seconds=60)
    assert book.decide("k", str(save_dir), now=late) == ("RUNNING (silent 90 s)", "resume", str(save_dir / "last.npz"))
    assert book.decide("new", str(tmp_path / "new")) == ("not started", "start", "")
    monkeypatch.setattr(sources, "MongoSource", lambda spec: ("mongo", spec))
    assert state.Book("s", mongo="host:1:db").source() == ("mongo", "host:1:db")


# --- sweep/claim.py -------------------------------------------------------------------------------------
def test_claim_holder_info_names_the_slurm_job_or_array_task(monkeypatch):
    from rhn_core.sweep.claim import describe, holder_info

    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    info = holder_info()
    assert (info["pid"], info["host"], info["slurm_job"]) == (os.getpid(), socket.gethostname(), None)
    since = datetime.datetime.fromisoformat(info["since"])
    assert since.tzinfo is not None and since.microsecond == 0
    assert abs((datetime.datetime.now(datetime.timezone.utc) - since).total_seconds()) < 60
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert holder_info()["slurm_job"] == "41"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")  # an array job without its task id: the job's own id
    assert holder_info()["slurm_job"] == "41"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert holder_info()["slurm_job"] == "40_3"
    assert describe({"pid": 5, "host": "n1", "slurm_job": "40_3", "since": "t"}) == (
        "launcher pid 5 on n1 (Slurm job 40_3) since t"
    )
    assert describe({"pid": 5, "slurm_job": None}) == "launcher pid 5 on ? since ?"
    assert describe({"host": "n1"}) == describe(["pid"]) == describe(None) == ""


def test_claim_file_holder_and_retries(tmp_path, monkeypatch):
    import time

    from rhn_core.sweep.claim import CLAIM_FILE, Claim

    folder = tmp_path / "a" / "run"
    quiet = Claim(str(folder))
    assert quiet.acquire(write=False) and (folder / CLAIM_FILE).read_text() == ""  # created, nothing written
    assert Claim(str(folder)).holder() == "a launcher"  # a holder still writing its line
    quiet.release()
    quiet.release()
    assert Claim(str(tmp_path / "none")).holder() == "a launcher"
    umask = os.umask(0o022)
    try:
        mine = Claim(str(folder))
        assert mine.acquire() and os.stat(folder / CLAIM_FILE).st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
    (folder / CLAIM_FILE).write_text("{not json")
    assert Claim(str(folder)).holder() == "a launcher"
    sleeps = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    assert not Claim(str(folder)).take(tries=3, pause_s=0.25)
    assert sleeps == [0.25, 0.25]  # between tries, not after the last
    assert not Claim(str(folder)).take() and sleeps[2:] == [0.3, 0.3]  # by default 3 tries, 0.3 s apart
    del sleeps[2:]
    assert Claim(str(folder)).held_elsewhere() and mine.fd is not None
    mine.release()
    assert mine.fd is None and not Claim(str(folder)).held_elsewhere()
    again = Claim(str(folder))
    assert again.take() and sleeps == [0.25, 0.25]  # free: taken at once
    assert json.loads((folder / CLAIM_FILE).read_text())["pid"] == os.getpid()
    again.release()


# --- sweep/runner.py ------------------------------------------------------------------------------------
class FixedBook:
    """state.Book's decide, with a fixed answer (or an error: the database gone)."""

    def __init__(self, answer):
        self.answer = answer

    def decide(self, key, save_dir, now=None):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def python_job(tmp_path, code, answer=("not started", "start", ""), key="k"):
    import sys

    from rhn_core.sweep.runner import SweepJob

    argv = [sys.executable, "-c", code]
    return SweepJob(key, argv, str(tmp_path / key), str(tmp_path / f"{key}.log"), 3, FixedBook(answer))


def test_sweep_job_command_environment_and_result(tmp_path, monkeypatch):
    import sys

    from rhn_core.backends import BACKENDS
    from rhn_core.sweep import runner

    assert runner.entry_command("torch") == [sys.executable, "-m", *BACKENDS["torch"].entry]
    script = tmp_path / "train.py"
    script.write_text("")
    monkeypatch.chdir(tmp_path)
    assert runner.entry_command("train.py") == [sys.executable, str(script)]
    with pytest.raises(RHNError, match=r"entry point 'nowhere.py' not found: give a backend \(.*torch"):
        runner.entry_command("nowhere.py")
    env = runner.child_env(3)
    assert env == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
        "TF_NUM_INTRAOP_THREADS": "3",
        "TF_NUM_INTEROP_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    code = "import os, sys; print(sys.argv[1:], os.environ['OMP_NUM_THREADS'], os.environ['PYTHONUNBUFFERED'])"
    job = python_job(tmp_path, code, ("FAILED", "resume", "/old/last.npz"))
    assert job.command("") == job.argv + [f"save_dir={tmp_path / 'k'}"]
    lines = []
    result = job(announce=lines.append)
    assert lines == ["resumed   k from /old/last.npz"]
    assert {k: result[k] for k in ("key", "outcome", "returncode", "reason")} == {
        "key": "k",
        "outcome": "finished",
        "returncode": 0,
        "reason": "",
    }
    assert 0 <= result["seconds"] < 60 and result["seconds"] == round(result["seconds"], 1)
    log = (tmp_path / "k.log").read_text()
    assert f"\n$ {' '.join(job.argv)} save_dir={tmp_path / 'k'} resume=/old/last.npz\n" in log
    assert f"['save_dir={tmp_path / 'k'}', 'resume=/old/last.npz'] 3 1\n" in log
    job(announce=lines.append)  # a second piece appends to the same log
    assert (tmp_path / "k.log").read_text().count("\n$ ") == 2
    failed = python_job(tmp_path, "import sys; sys.exit(3)", key="f")(announce=lines.append)
    assert (failed["outcome"], failed["returncode"], lines[-1]) == ("failed", 3, "started   f")


def test_sweep_job_skips_or_leaves_a_run_in_one_line(tmp_path):
    lines = []
    skipped = python_job(tmp_path, "", ("COMPLETED", "skip", ""))(announce=lines.append)
    assert (skipped["outcome"], skipped["returncode"], skipped["reason"]) == (
        "skipped",
        None,
        "it is COMPLETED in the database",
    )
    assert lines == ["skipped   k: it is COMPLETED in the database"]
    gone = python_job(tmp_path, "", RHNError("MongoDB at h:1 cannot be reached"))(announce=lines.append)
    assert gone["outcome"] == "not started" and lines[-1] == "not started k: MongoDB at h:1 cannot be reached"
    stopped = python_job(tmp_path, "")
    assert stopped.stop() is False  # nothing running
    assert stopped(announce=lines.append)["outcome"] == "not started"
    assert lines[-1] == "not started k: the sweep was asked to stop"
    assert not os.path.exists(tmp_path / "k.log")  # no run was started


def test_sweep_job_under_slurm_fails_its_job_and_waits_for_the_preemption_signal(tmp_path, monkeypatch):
    import signal
    import time

    from rhn_core.sweep import runner

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    sleeps = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match=f"run k exited with status 3: see {tmp_path / 'k.log'}"):
        python_job(tmp_path, "import sys; sys.exit(3)")(announce=lambda line: None)
    assert sleeps == [] and signal.getsignal(signal.SIGTERM) is before  # a plain failure: no wait
    # Slurm signals the whole job: the run checkpoints on its SIGTERM and exits before submitit's signal.
    # The launcher's handler is called here as the signal would call it (a real SIGTERM to the test process
    # would reach the test runner too), then the run exits.
    import threading

    go = tmp_path / "go"
    job = python_job(
        tmp_path, f"import os, sys, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)\nsys.exit(1)"
    )

    def preempt():
        waited = threading.Event()
        for _ in range(1000):  # up to 10 s for the launcher to install its handler
            handler = signal.getsignal(signal.SIGTERM)
            if getattr(handler, "__self__", None) is job:
                handler(signal.SIGTERM, None)
                break
            waited.wait(0.01)
        go.write_text("")

    helper = threading.Thread(target=preempt)
    helper.start()
    with pytest.raises(RuntimeError, match="exited with status 1"):
        job(announce=lambda line: None)
    helper.join()
    assert sleeps == [runner.PREEMPT_WAIT_S] and signal.getsignal(signal.SIGTERM) is before
    assert python_job(tmp_path, "pass")(announce=lambda line: None)["outcome"] == "finished"


def fake_submitit(monkeypatch):
    """submitit's classes that rhn uses, recording what they are given. The real package is not imported in
    process: its import, in a test, upsets pytest's terminal under mutmut's stats run (tools/mutation.py)."""
    import sys
    import types

    class DelayedSubmission:
        def __init__(self, function, *args, **kwargs):
            self.function, self.args, self.kwargs = function, args, kwargs

    class SlurmExecutor:
        def __init__(self, folder, max_num_timeout=3):
            self.folder, self.max_num_timeout, self.parameters = folder, max_num_timeout, {}

        def update_parameters(self, **params):
            self.parameters.update(params)

        def batch(self):
            import contextlib

            self.batches = getattr(self, "batches", 0) + 1
            return contextlib.nullcontext()

        def submit(self, job):
            return ("submitted", job, self.batches)

    fake = types.ModuleType("submitit")
    fake.helpers = types.SimpleNamespace(DelayedSubmission=DelayedSubmission)
    fake.SlurmExecutor = SlurmExecutor
    monkeypatch.setitem(sys.modules, "submitit", fake)


def test_sweep_job_stop_checkpoint_and_pickling(tmp_path, monkeypatch):
    import pickle
    import subprocess
    import sys
    import time

    from rhn_core.sweep import runner

    fake_submitit(monkeypatch)

    job = python_job(tmp_path, "")
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(5)); print(flush=True); time.sleep(60)"
    job._child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    job._child.stdout.readline()
    child = job._child
    copy = pickle.loads(pickle.dumps(job))  # submitit pickles the job: without its child or its stop request
    assert copy._child is None and copy._stop_requested is False and copy.key == "k" and copy.threads == 3
    resubmitted = job.checkpoint("a", b=1)
    assert child.wait(timeout=30) == 5  # told to stop (SIGTERM), and it did
    assert job._child is None and job._stop_requested
    assert resubmitted.function is job and resubmitted.args == ("a",) and resubmitted.kwargs == {"b": 1}
    assert job.stop_wait_s == 75  # Slurm's signal comes 90 s before the end (signal_delay_s): 15 s to spare

    class Vanished:  # exited between the look and the signal
        def poll(self):
            return None

        def send_signal(self, sig):
            raise ProcessLookupError

    job._child = Vanished()
    assert job.stop() is False
    started = time.time() - 2.46
    assert job.result("finished", started)["seconds"] == 2.5  # to a tenth of a second
    stuck = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    stuck.stdout.readline()
    job._child, job.stop_wait_s = stuck, 0.2
    job.checkpoint()
    assert stuck.wait(timeout=30) == -9  # it ignored SIGTERM: killed after stop_wait_s
    assert job.stop() is False
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert runner.exited(gone.pid, 0)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    assert not runner.exited(alive.pid, 0.3, poll_s=0.05) and time.monotonic() - t0 >= 0.3
    alive.kill()
    assert runner.exited(alive.pid, 10)
    alive.wait()


# --- sweep/executors.py ---------------------------------------------------------------------------------
class WaitingJob:
    """A SweepJob's interface: it runs until told to stop, and records the signals it was sent."""

    def __init__(self, key, on_start=None):
        import threading

        self.key, self.on_start, self.signals, self.done = key, on_start, [], threading.Event()

    def stop(self, sig):
        self.signals.append(sig)
        if len(self.signals) == 2:
            self.done.set()
        return True

    def leave(self, outcome, reason, start, announce):
        import time

        assert abs(time.time() - start) < 60  # the time it was left, as SweepJob.result reads it
        announce(f"{outcome:9s} {self.key}: {reason}")
        return {"key": self.key, "outcome": outcome}

    def __call__(self, announce):
        announce(f"started   {self.key}")
        if self.on_start:
            self.on_start(self)
            assert self.done.wait(30)
        return {"key": self.key, "outcome": "finished"}


def test_local_executor_stops_its_runs_once_then_kills_them_and_starts_no_more(tmp_path, capsys):
    import signal

    from rhn_core.sweep.executors import LocalExecutor

    executor = LocalExecutor(1)

    def signals_twice(job):  # the handler run as Ctrl-C, then SIGTERM, would run it
        assert signal.getsignal(signal.SIGINT) == executor._handle == signal.getsignal(signal.SIGTERM)
        executor._handle(signal.SIGINT, None)
        executor._handle(signal.SIGTERM, None)

    first, second = WaitingJob("a", signals_twice), WaitingJob("b")
    reports = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    results = executor.run([first, second], lambda job, what: reports.append((job.key, what)))
    assert results == [{"key": "a", "outcome": "finished"}, {"key": "b", "outcome": "not started"}]
    assert first.signals == [signal.SIGTERM, signal.SIGKILL] and second.signals == []
    assert reports == [
        ("a", "started   a"),
        ("a", {"key": "a", "outcome": "finished"}),
        ("b", "not started b: the sweep was asked to stop"),
        ("b", {"key": "b", "outcome": "not started"}),
    ]
    out = capsys.readouterr().out
    assert out == (
        "\nSIGINT: each running run saves a checkpoint and stops (1 running; again to kill them); "
        "launch the sweep again to resume\n"
    )
    assert {s: signal.getsignal(s) for s in before} == before and executor._running == set()


def test_local_executor_runs_jobs_side_by_side():
    import threading

    from rhn_core.sweep.executors import LocalExecutor

    barrier = threading.Barrier(3, timeout=30)  # three jobs that each wait for the other two

    class Together(WaitingJob):
        def __call__(self, announce):
            barrier.wait()
            return {"key": self.key, "outcome": "finished"}

    jobs = [Together(k) for k in "abc"]
    assert [r["key"] for r in LocalExecutor(3).run(jobs, lambda job, what: None)] == ["a", "b", "c"]

    class Brief(WaitingJob):
        def __call__(self, announce):
            threading.Event().wait(0.05)
            return {"key": self.key, "outcome": "finished"}

    import time

    t0 = time.monotonic()
    LocalExecutor(2).run([Brief("a"), Brief("b")], lambda job, what: None)
    assert time.monotonic() - t0 < 1.0  # looked at every 0.2 s
    # from a thread other than the main one (no signal handlers can be set there)
    results = []
    worker = threading.Thread(target=lambda: results.extend(LocalExecutor(1).run([Brief("c")], lambda j, w: None)))
    worker.start()
    worker.join(30)
    assert results == [{"key": "c", "outcome": "finished"}]


def test_slurm_executor_parameters_and_wait(tmp_path, monkeypatch):
    import shutil
    import time

    from rhn_core.sweep.executors import SlurmExecutor

    fake_submitit(monkeypatch)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RHNError, match="sbatch not found: run the slurm executor on a Slurm login node"):
        SlurmExecutor(str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/sbatch" if name == "sbatch" else None)
    plain = SlurmExecutor(str(tmp_path)).executor
    assert plain.folder == str(tmp_path) and plain.max_num_timeout == 3
    plain = plain.parameters
    assert (plain["time"], plain["cpus_per_task"], plain["signal_delay_s"]) == (60, 1, 90)
    assert not {"partition", "mem", "gpus_per_node", "array_parallelism"} & set(plain)
    full = SlurmExecutor(
        str(tmp_path),
        partition="gpu",
        time_min=30,
        cpus=4,
        mem="8G",
        gpus=1,
        options=("account=proj", "--qos=low=x", "gpus-per-task=2"),
        array_parallelism=2,
        signal_delay_s=60,
        max_requeues=5,
    )
    p = full.executor.parameters
    assert (p["partition"], p["time"], p["cpus_per_task"], p["mem"], p["gpus_per_node"]) == ("gpu", 30, 4, "8G", 1)
    assert (p["array_parallelism"], p["signal_delay_s"]) == (2, 60) and full.executor.max_num_timeout == 5
    assert p["additional_parameters"] == {"account": "proj", "qos": "low=x", "gpus_per_task": "2"}
    jobs = [WaitingJob("a"), WaitingJob("b")]
    assert full.submit(jobs) == [("submitted", jobs[0], 1), ("submitted", jobs[1], 1)]  # one array
    for bad in ("account", "=x"):
        with pytest.raises(RHNError, match=f"--slurm-option '{bad}' is not KEY=VALUE"):
            SlurmExecutor(str(tmp_path), options=(bad,))

    class Handle:
        def __init__(self, polls, state):
            self.polls, self.state = polls, state

        def done(self):
            self.polls -= 1
            return self.polls < 0

    sleeps, reports = [], []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    handles = [Handle(2, "FAILED"), Handle(0, "COMPLETED")]
    SlurmExecutor.wait(handles, lambda h, s: reports.append((h, s)), poll_s=1.5)
    assert reports == [(handles[1], "COMPLETED"), (handles[0], "FAILED")] and sleeps == [1.5, 1.5]
    reports.clear()
    SlurmExecutor.wait([Handle(1, "DONE")], lambda h, s: reports.append(s))
    assert sleeps[2:] == [5.0] and reports[-1] == "DONE"


# --- distributed/world.py -------------------------------------------------------------------------------
def test_world_of_each_launcher_in_detail(tmp_path, monkeypatch):
    from rhn_core.distributed.world import World, detect

    assert World().chief and not World(1, 2).chief and World(0, 2).chief
    assert World(0, 3).rows(7) == slice(0, 2) and World(2, 3).rows(7) == slice(4, 6)  # equal shares
    assert detect("torch", {"RANK": "1", "WORLD_SIZE": "2"}) == World(1, 2, 0, "torchrun")  # LOCAL_RANK optional
    with pytest.raises(RHNError, match=r"^WORLD_SIZE='two' is not an integer: start the job with torchrun or srun$"):
        detect("torch", {"RANK": "1", "WORLD_SIZE": "two"})
    alone = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    assert detect("torch", alone) == World(0, 1, 0, "srun") and alone == {
        "SLURM_PROCID": "0",
        "SLURM_STEP_NUM_TASKS": "1",
    }  # one task: nothing set for a rendezvous
    # srun without MASTER_ADDR: rank 0's host from the step's node list, through scontrol
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\necho node7\necho node8\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    step = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "node[7-8]"}
    step["SLURM_JOB_NODELIST"] = "node[1-9]"
    assert detect("torch", step) == World(1, 2, 0, "srun")
    assert (bin_dir / "args").read_text() == "show hostnames node[7-8]\n"
    assert {k: step[k] for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")} == {
        "MASTER_ADDR": "node7",
        "MASTER_PORT": "29500",
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
    }
    assert step["RHN_RANKS_FROM"] == "srun" and detect("torch", step) == World(1, 2, 0, "srun")
    job = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "node[3-4]", "MASTER_PORT": "7"}
    detect("torch", job)
    assert (bin_dir / "args").read_text() == "show hostnames node[3-4]\n" and job["MASTER_PORT"] == "7"
    scontrol.write_text("#!/bin/sh\nexit 1\n")
    with pytest.raises(RHNError, match=r"cannot find rank 0's host in SLURM node list 'n\[1-2\]': export MASTER_ADDR"):
        detect("torch", {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "n[1-2]"})


def test_world_of_a_tf_config_and_its_errors():
    from rhn_core.distributed.world import World, detect

    assert detect("tf", {}) == World() == detect("tf", {"TF_CONFIG": ""})
    workers = json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": "0"}})
    assert detect("tf", {"TF_CONFIG": workers}) == World(0, 2, 0, "TF_CONFIG")
    chief = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief", "index": 0}})
    assert detect("tf", {"TF_CONFIG": chief}) == World(0, 2, 0, "TF_CONFIG")
    assert detect("numpy", {"TF_CONFIG": chief, "RANK": "1", "WORLD_SIZE": "2"}) == World()  # no launcher
    for bad in ("not json", '{"cluster": {"worker": ["a:1"]}}', '{"cluster": [], "task": {}}', "[1]"):
        with pytest.raises(RHNError, match=r"^TF_CONFIG is not a tf.distribute cluster: give JSON such as "):
            detect("tf", {"TF_CONFIG": bad})
    absent = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}})
    with pytest.raises(RHNError, match="TF_CONFIG is not a tf.distribute cluster"):
        detect("tf", {"TF_CONFIG": absent})


def test_check_batch_names_processes_and_replicas():
    from rhn_core.distributed.world import World, check_batch

    with pytest.raises(RHNError) as e:
        check_batch(World(0, 2), 6, 2, "tf")
    assert str(e.value) == (
        "batch_size=6 does not split evenly over 2 processes x 2 replicas: use a batch_size divisible by 4 "
        "(each part trains batch_size / 4 rows)"
    )
    with pytest.raises(RHNError) as e:
        check_batch(World(), 2, 3)
    assert str(e.value) == (
        "batch_size=2 is smaller than the 3 parts it is split into (3 replicas): use at most 2 or a larger batch_size"
    )
    check_batch(World(0, 2), 8, 2)
    check_batch(World(), 3, 1)
    check_batch(World(0, 4), 4)  # as many parts as rows: one row each
    check_batch(World(), 1, 5, "numpy")  # replicas count only for a backend that has them


def test_claim_check_leaves_the_line_and_a_lock_error_passes_through(tmp_path, monkeypatch):
    import errno
    import fcntl

    from rhn_core.sweep.claim import CLAIM_FILE, Claim

    (tmp_path / CLAIM_FILE).write_text('{"pid": 99999999, "host": "gone"}\n')  # its launcher has ended
    assert not Claim(str(tmp_path)).held_elsewhere()
    assert (tmp_path / CLAIM_FILE).read_text() == '{"pid": 99999999, "host": "gone"}\n'  # a look writes nothing

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    opened = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(OSError, match="No locks available"):
        Claim(str(tmp_path)).acquire()
    if opened is not None:
        assert len(os.listdir("/proc/self/fd")) == opened  # its file closed again


def test_sweep_job_child_gets_the_environment_its_own_session_the_claim_and_one_log(tmp_path, monkeypatch):
    import signal

    from rhn_core.sweep import runner

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("RHN_TEST_MARK", "from the launcher")
    installed = []
    real_signal = signal.signal
    monkeypatch.setattr(signal, "signal", lambda s, h: installed.append(s) or real_signal(s, h))
    code = (
        "import os, sys\n"
        "print(os.environ['RHN_TEST_MARK'], os.environ['OMP_NUM_THREADS'])\n"
        "print('own session', os.getsid(0) == os.getpid())\n"
        "fds = os.listdir('/proc/self/fd') if os.path.isdir('/proc/self/fd') else []\n"
        "paths = [os.path.realpath('/proc/self/fd/' + n) for n in fds]\n"
        "print('claim held', any(p.endswith('sweep.claim') for p in paths))\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    job = python_job(tmp_path, code)
    assert job(announce=lambda line: None)["outcome"] == "finished"
    log = (tmp_path / "k.log").read_text()
    assert "from the launcher 3\n" in log and "own session True\n" in log and "to stderr\n" in log
    if os.path.isdir("/proc/self/fd"):
        assert "claim held True\n" in log  # the run keeps the claim while it trains, whatever its launcher does
    assert installed == []  # no SIGTERM handler outside Slurm (a local sweep handles its signals itself)
    assert job._child is None and job.stop() is False  # ended: nothing to stop
    import subprocess
    import sys
    import time

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    assert not runner.exited(alive.pid, 0.3)
    assert time.monotonic() - t0 < 1.0  # polled often, not once a second
    alive.kill()
    alive.wait()


def test_file_observer_replaces_an_artifact_added_again(tmp_path):
    from rhn_core.tracking.observer import FileObserver

    obs = FileObserver(str(tmp_path / "runs"))
    obs.dir = str(tmp_path / "runs" / "1")
    os.makedirs(obs.dir)
    obs.run_entry = {"artifacts": ["curve.png"]}
    ckpt = tmp_path / "last.npz"
    for epoch in (b"epoch 1", b"epoch 2"):
        ckpt.write_bytes(epoch)
        obs.artifact_event("last.npz", str(ckpt))
    assert (tmp_path / "runs" / "1" / "last.npz").read_bytes() == b"epoch 2"
    assert json.loads((tmp_path / "runs" / "1" / "run.json").read_text())["artifacts"] == ["curve.png", "last.npz"]


def test_run_store_numbers_runs_as_sacred_does_and_retries_a_taken_id():
    from pymongo.errors import DuplicateKeyError

    from rhn_core.tracking.observer import RunStore

    class Runs:
        def __init__(self, ids, taken=()):
            self.ids, self.taken = list(ids), list(taken)

        def find_one(self, query, projection, sort):
            assert sort == [("_id", -1)]
            return {"_id": max(self.ids)} if self.ids else None

        def insert_one(self, entry):
            if self.taken:  # another run inserted this id between our look and our insert
                self.ids.append(self.taken.pop(0))
                raise DuplicateKeyError("taken")
            self.ids.append(entry["_id"])

    store = RunStore.__new__(RunStore)
    for ids, taken, expected in (([], (), 1), ([1, 4], (), 5), ([3], (4,), 5)):
        store.runs = Runs(ids, taken)
        entry = {"status": "RUNNING"}
        assert store.insert(entry) == expected and entry["_id"] == expected


def test_world_details_the_launcher_tests_leave_out(tmp_path, monkeypatch):
    from rhn_core.distributed.world import World, check_batch, detect

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    scontrol.write_text("#!/bin/sh\necho 'slurm_load_node error: Unable to contact slurm controller'\nexit 1\n")
    scontrol.chmod(0o755)
    for env, listed in (({"SLURM_JOB_NODELIST": "n[1-2]"}, "'n[1-2]'"), ({}, "''")):
        with pytest.raises(RHNError) as e:  # a failing scontrol's output is no host name
            detect("torch", {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", **env})
        assert str(e.value).startswith(f"cannot find rank 0's host in SLURM node list {listed}: ")
    srun = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1"}
    srun["RANK"] = "1"  # RANK without WORLD_SIZE: not torchrun's
    assert detect("torch", srun) == World(1, 2, 1, "srun")
    assert "RHN_RANKS_FROM" not in srun and srun["WORLD_SIZE"] == "2" and srun["LOCAL_RANK"] == "1"
    with pytest.raises(RHNError, match="does not split evenly over 2 processes"):
        check_batch(World(0, 2), 3)


def test_shard_masks_keeps_each_ranks_rows_and_absent_masks_absent():
    from rhn_core.distributed import World, shard_masks
    from rhn_core.masks import Masks

    rows = World(1, 2).rows(4)
    x, o = np.arange(4.0)[:, None], np.arange(8.0).reshape(4, 2)
    layers = tuple(np.arange(12.0).reshape(4, 3) + 100 * l for l in range(2))
    half = shard_masks(Masks(x, layers, None, o), rows)
    np.testing.assert_array_equal(half.x, x[2:])
    assert len(half.i) == 2 and half.h is None
    for got, full in zip(half.i, layers):
        np.testing.assert_array_equal(got, full[2:])
    none = shard_masks(Masks(None, None, layers, None), rows)  # no dropout on x, i, o: nothing to slice
    assert none.x is None and none.i is None and none.o is None
    np.testing.assert_array_equal(none.h[1], layers[1][2:])


def test_observer_start_document_and_sources_of_the_experiment_folder(tmp_path, monkeypatch):
    from rhn_core.tracking import observer

    base = tmp_path / "project"
    (base / "pkg").mkdir(parents=True)
    (base / "pkg" / "a.py").write_text("x = 1\n")
    seen = {}

    class Store(FlakyStore):
        def __init__(self, target, database):
            super().__init__()
            seen["database"] = database

        def save_sources(self, sources):
            seen["sources"] = sources
            assert all(open(path).read() for _, path in sources)  # the files are found, wherever the cwd is
            return [[name, f"id-{name}"] for name, _ in sources]

        def insert(self, entry):
            seen["inserted"] = dict(entry)
            return 12

    monkeypatch.setattr(observer, "RunStore", Store)
    obs = flaky_observer(tmp_path)
    ex_info = {"name": "rhn_prediction", "base_dir": str(base), "sources": [["pkg/a.py", "md5"]]}
    assert obs._insert(ex_info, "main", {"hostname": "h"}, "t0", {"seed": 1}, {"options": {}}, None, "db") == 12
    assert seen["database"] == "db" and seen["sources"] == [("pkg/a.py", str(base / "pkg" / "a.py"))]
    entry = seen["inserted"]
    assert entry["status"] == "RUNNING" and entry["format"] == "MongoObserver-0.7.0"  # what Omniboard reads
    assert {k: entry[k] for k in ("captured_out", "artifacts", "resources", "info", "heartbeat")} == {
        "captured_out": "",
        "artifacts": [],
        "resources": [],
        "info": {},
        "heartbeat": None,
    }
    assert entry["experiment"]["sources"] == [["pkg/a.py", "id-pkg/a.py"]] and entry["command"] == "main"
    obs.completed_event("t1", None)
    obs.join()
    assert obs.store.entries[12]["status"] == "COMPLETED"
    given = flaky_observer(tmp_path)
    assert given._insert(ex_info, "main", {}, "t0", {}, {}, 5, "db") == 5  # an id Sacred chose: written under it
    assert given.store.entries[5]["status"] == "RUNNING"
    given.completed_event("t1", None)
    given.join()


def test_observer_hands_every_event_to_its_file_fallback(tmp_path):
    calls = []

    class Fallback:
        def __getattr__(self, name):
            return lambda *args: calls.append((name, args))

    obs = flaky_observer(tmp_path)
    obs.fallback = Fallback()
    obs.heartbeat_event({"e": 1}, "out", "beat", 3.0)
    obs.log_metrics({"m": {}}, {"i": 1})
    obs.artifact_event("a.png", "/x/a.png", {"k": 1}, "image/png")
    obs.resource_event("/x/data")
    obs.completed_event("t", 1.5)
    obs.interrupted_event("t", "INTERRUPTED")
    obs.failed_event("t", ["trace"])
    assert calls == [
        ("heartbeat_event", ({"e": 1}, "out", "beat", 3.0)),
        ("log_metrics", ({"m": {}}, {"i": 1})),
        ("artifact_event", ("a.png", "/x/a.png", {"k": 1}, "image/png")),
        ("resource_event", ("/x/data",)),
        ("completed_event", ("t", 1.5)),
        ("interrupted_event", ("t", "INTERRUPTED")),
        ("failed_event", ("t", ["trace"])),
    ]


def test_run_store_puts_an_artifact_with_its_type(tmp_path):
    from rhn_core.tracking.observer import RunStore

    class FS:
        def put(self, f, **kwargs):
            self.put_with = (f.read(), kwargs)
            return "file-id"

    store = RunStore.__new__(RunStore)
    store.fs, store.runs = FS(), type("Runs", (), {"name": "runs"})()
    (tmp_path / "curve.png").write_bytes(b"png")
    assert store.put_artifact(3, "curve.png", str(tmp_path / "curve.png"), "image/png", {"epoch": 2}) == "file-id"
    assert store.fs.put_with == (
        b"png",
        {"filename": "artifact://runs/3/curve.png", "content_type": "image/png", "metadata": {"epoch": 2}},
    )


def test_a_refused_claim_of_nested_new_folders_removes_every_one_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    nested = tmp_path / "kept" / "a" / "b" / "run"
    assert missing_folders(str(nested)) == [str(nested), str(nested.parent), str(nested.parent.parent)]
    assert missing_folders(str(tmp_path)) == []
    claim = RunFolder.claim(str(nested))
    assert claim.created == [str(nested), str(nested.parent), str(nested.parent.parent)]
    claim.abandon()
    assert not (tmp_path / "kept" / "a").exists() and (tmp_path / "kept").is_dir()  # only what it made
