"""One run, one launcher: a sweep never starts a run twice, whichever launch reaches it and when.

The property is checked where the decision is taken (``SweepJob`` at the start of a run: the
claim, then what the database says) at every moment of a run's life, and end to end with two
real launches of one sweep 2 s apart, into a file observer folder and into SecantusDB.
"""

import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from rhn_core.sweep import cli, state
from rhn_core.sweep.claim import CLAIM_FILE, Claim
from rhn_core.sweep.runner import SweepJob

NOW = datetime.datetime.now(datetime.timezone.utc)


def ago(seconds):
    """An ISO time ``seconds`` before now: taken when the piece is written, not when the module was collected
    (a full suite reaches these tests minutes after collection, and a run 'started 1 s ago' would look dead)."""
    if seconds is None:
        return None
    return (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds)).isoformat()


# --- the claim -------------------------------------------------------------------------------------
def test_claim_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    mine = Claim(str(tmp_path / "run"))
    assert mine.acquire() and not Claim(str(tmp_path / "run")).acquire()  # a second open file loses too
    info = json.loads((tmp_path / "run" / CLAIM_FILE).read_text())
    assert info["pid"] == os.getpid() and Claim(str(tmp_path / "run")).holder().startswith(
        f"launcher pid {os.getpid()} on "
    )
    mine.release()
    assert not Claim(str(tmp_path / "run")).held_elsewhere()
    # a holder killed without a word leaves no stale claim: the OS drops its lock
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from rhn_core.sweep.claim import Claim; "
            f"assert Claim({str(tmp_path / 'run')!r}).acquire(); print('held', flush=True); "
            "time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert Claim(str(tmp_path / "run")).held_elsewhere()
    finally:
        holder.kill()
        holder.wait()
    assert Claim(str(tmp_path / "run")).acquire()


# --- the decision at every moment of a run's start -------------------------------------------------
def write_piece(folder, run_id, key, status, heartbeat=None, start=None):
    """A run of sweep ``s`` as the file observer writes it; ``heartbeat`` and ``start`` in seconds ago."""
    d = folder / str(run_id)
    d.mkdir(parents=True)
    (d / "run.json").write_text(
        json.dumps(
            {
                "status": status,
                "heartbeat": ago(heartbeat),
                "start_time": ago(start),
                "meta": {"sweep": {"name": "s", "key": key, "values": {}}},
            }
        )
    )


# What the database shows of run "k", the moment a second launch reaches it. "claimed": the launch that
# started it still holds the run's claim (the same disk); without it, the second launch is on a machine
# whose disk the claim does not reach, or the first launcher and its run are gone.
MOMENTS = {
    "queued": [],  # the first launch has it waiting for a slot: no piece yet
    "started, no heartbeat yet": [("RUNNING", None, 1)],
    "running": [("RUNNING", 5, 60)],
    "silent": [("RUNNING", 600, 900)],
    "died before its first heartbeat": [("RUNNING", None, 600)],
    "interrupted": [("INTERRUPTED", 30, 90)],
    "finished": [("INTERRUPTED", 300, 900), ("COMPLETED", 30, 200)],
}


def expected(moment, claimed):
    """The property: a run is started (or resumed) only when no process can still be writing it."""
    if claimed or moment in ("started, no heartbeat yet", "running", "finished"):
        return "skipped"
    return "resumed" if MOMENTS[moment] else "started"


@pytest.mark.parametrize("claimed", [True, False], ids=["claimed", "unclaimed"])
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_relaunch_starts_a_run_only_when_nobody_can_be_writing_it(moment, claimed, tmp_path):
    db, save_dir = tmp_path / "db", tmp_path / "sweep" / "k"
    db.mkdir()
    for i, (status, beat, start) in enumerate(MOMENTS[moment], 1):
        write_piece(db, i, "k", status, beat, start)
    write_piece(db, 99, "other", "RUNNING", 1, 2)  # another run of the sweep changes nothing
    if MOMENTS[moment]:
        save_dir.mkdir(parents=True)
        (save_dir / "last.npz").write_bytes(b"the checkpoint of an earlier piece")
    first = Claim(str(save_dir))
    if claimed:
        assert first.acquire()
    record = tmp_path / "argv.txt"
    # the "run": records its argv, so the test sees whether it started and with which resume=
    argv = [sys.executable, "-c", f"import sys; open({str(record)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"]
    lines = []
    job = SweepJob("k", argv, str(save_dir), str(tmp_path / "k.log"), 1, state.Book("s", file_storage=str(db)))
    result = job(announce=lines.append)
    first.release()
    outcome = lines[0].split()[0] if result["outcome"] == "finished" else result["outcome"]
    assert outcome == expected(moment, claimed), (result, lines)
    starts = record.read_text().splitlines() if record.exists() else []
    assert len(starts) == (outcome != "skipped")
    if claimed:
        assert re.match(r"another launch runs it \(launcher pid \d+ on ", result["reason"])
    if outcome == "resumed":
        assert lines == [f"resumed   k from {save_dir / 'last.npz'}"] and starts[0].endswith("last.npz")
    assert not Claim(str(save_dir)).held_elsewhere()  # given back when the run ended


def test_a_fresh_run_is_decided_from_its_heartbeat_or_its_start():
    run = {"status": "RUNNING", "heartbeat": None, "start_time": NOW.replace(tzinfo=None)}
    assert state.state([run], now=NOW)[1] == "skip"
    assert state.state([run], now=NOW + datetime.timedelta(seconds=state.STALE_S + 1))[1] == "resume"
    assert state.state([{"status": "RUNNING"}], now=NOW)[1] == "skip"  # no time at all: never a second writer


# --- two real launches of one sweep, 2 s apart --------------------------------------------------------
def launch(*args):
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "rhn_core.sweep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )


@pytest.mark.slow  # over 10 s each: two real launches of a 4-run sweep
@pytest.mark.parametrize("store", ["file", "mongo"])
def test_a_sweep_launched_twice_runs_each_run_once(store, request, small_text, tmp_path):
    pytest.importorskip("torch")  # the sweep's runs train with the torch backend
    if store == "mongo":
        server, db_name = request.getfixturevalue("mongo_db")
        where = ["-m", server.spec(db_name)]
    else:
        where = ["-F", str(tmp_path / "obs")]
    args = [
        "run",
        "--name",
        "s1",
        *where,
        "--sweep-dir",
        str(tmp_path),
        "--parallel",
        "2",
        "--threads",
        "1",
        "-s",
        "depth=1,2",
        "-s",
        "seed=1:3",
        "torch",
        "with",
        "tiny",
        "dataset=chars",
        f"data_path={small_text}",
        "batch_size=16",
        "num_steps=10",
        "max_max_epoch=3",
    ]
    first = launch(*args)
    time.sleep(2)
    second = launch(*args)
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outs
    keys = [f"depth={d},seed={s}" for d in (1, 2) for s in (1, 2)]
    starts = [line.split()[1] for out in outs for line in out.splitlines() if line.startswith("started ")]
    assert sorted(starts) == keys, outs  # each run started by exactly one of the launches
    # and some were reached by both launches: the one that came second left them to the other
    assert "\nskipped   depth=" in "".join(outs) or "another launch runs it" in "".join(outs), outs
    for out in outs:  # one line per event, never two on one line
        for event in ("started   depth=", "skipped   depth=", "finished after"):
            assert out.count(event) == sum(event in line for line in out.splitlines()), out
    for key in keys:  # trained once: one run's output in its log
        log = (tmp_path / "s1" / "logs" / f"{key}.log").read_text()
        assert log.count("Full Test Perplexity") == 1 and log.count("Epoch: 3 Train") == 1, log
    status = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "rhn_core.sweep",
            "status",
            "--name",
            "s1",
            *where,
            "--sweep-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    rows = [line.split() for line in status.stdout.splitlines() if line.startswith("depth=")]
    assert [(r[0], r[2], r[3]) for r in rows] == [(k, "COMPLETED", "1") for k in keys], status.stdout
    report = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "rhn_core.tracking.report",
            "--no-plot",
            "--sweep",
            "s1",
            *(["--mongo", where[1]] if store == "mongo" else ["--dir", where[1]]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert report.returncode == 0 and "sweep s1: 4 runs (4 pieces)" in report.stdout, report.stdout + report.stderr


# --- smaller things of the command -----------------------------------------------------------------------
def test_run_options_may_follow_the_entry_point():
    args = cli.parse_args(
        [
            "run",
            "--name",
            "s",
            "-F",
            "obs",
            "-s",
            "depth=1,2",
            "torch",
            "with",
            "demo",
            "max_max_epoch=3",
            "--dry-run",
            "--parallel",
            "2",
            "-s",
            "seed=1:3",
            "--wait",
        ]
    )
    assert (args.dry_run, args.wait, args.parallel, args.sweep) == (True, True, 2, ["depth=1,2", "seed=1:3"])
    assert (args.entry, args.fixed, args.name) == ("torch", ["with", "demo", "max_max_epoch=3"], "s")


def test_dry_run_and_wait_last_on_the_command_line(tmp_path, capsys):
    assert (
        cli.main(
            [
                "run",
                "--name",
                "d",
                "--sweep-dir",
                str(tmp_path),
                "-s",
                "depth=1,2",
                "torch",
                "with",
                "tiny",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("sweep d: 2 runs of torch with tiny\n") and not (tmp_path / "d").exists()
    assert cli.main(["run", "--name", "d", "torch", "with", "tiny", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


class Starter:
    """A job that only announces its start, all of them at once (a barrier), as two runs starting together."""

    log_path = "-"

    def __init__(self, key, barrier):
        self.key, self.barrier = key, barrier

    def result(self, outcome, start, returncode=None, reason=""):
        return {"key": self.key, "outcome": outcome, "returncode": returncode, "seconds": 0.0, "reason": reason}

    def __call__(self, announce):
        self.barrier.wait()
        announce(f"started   {self.key}")
        return self.result("finished", 0, 0)


class Terminal:
    """A standard output whose writes let other threads run, as a write to a terminal or pipe does."""

    def __init__(self):
        self.parts = []

    def write(self, text):
        time.sleep(0.0005)
        self.parts.append(text)

    def flush(self):
        time.sleep(0.0005)


def test_runs_starting_together_print_one_line_each(monkeypatch):
    n, rounds = 8, 10
    barrier = threading.Barrier(n)
    jobs = [Starter(f"k{i}", barrier) for _ in range(rounds) for i in range(n)]
    args = type("Args", (), {"parallel": n, "name": "lines"})
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert cli.run_local(args, jobs) == 0
    monkeypatch.undo()
    lines = "".join(terminal.parts).splitlines()
    starts = [line for line in lines if "started" in line]
    assert len(starts) == n * rounds and all(re.fullmatch(r"started   k\d", line) for line in starts)


def test_status_shows_the_best_valid_figure_of_a_stopped_run():
    piece = {
        "status": "INTERRUPTED",
        "config": {"dataset": "ptb"},
        "info": {"epoch_nr": 2, "logs": {"valid_perplexity": [float("inf"), 300.5, 250.25]}},
    }
    [row] = cli.rows({}, {"k": [piece]}, state.STALE_S)
    assert (row["state"], row["epoch"], row["best"]) == ("INTERRUPTED", 2, "250.25 ppl")
    char = dict(piece, config={"dataset": "chars"})
    assert cli.rows({}, {"k": [char]}, state.STALE_S)[0]["best"] == "7.967 bpc"  # log2(250.25)
