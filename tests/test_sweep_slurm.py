"""``rhn-sweep --executor slurm`` on a real one-node Slurm cluster (the ``slurm`` fixture) into SecantusDB:
a job array, a re-launch that skips what finished, a cancelled job, and a requeue after the pre-timeout
signal (submitit's ``job._interrupt()``) that continues the run where it stopped, a requeue within seconds of
the save after ``scancel --signal=USR2``, and a job that finds its run claimed by another launcher."""

import os
import re
import subprocess
import time

import pytest

from rhn_core.sweep.claim import Claim
from test_sweep import sweep_cli, sweep_runs, tiny_run, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.mongo, pytest.mark.subprocess]

submitit = pytest.importorskip("submitit")
pytest.importorskip("torch")  # the sweeps' runs train with the torch backend


def job_ids(stdout):
    """{run key: Slurm job id} from the sweep's output."""
    return dict(re.findall(r"^submitted (\S+): Slurm job (\S+)$", stdout, re.MULTILINE))


def by_key(server, db_name, name):
    pieces = {}
    for run in sweep_runs(server, db_name, name):
        pieces.setdefault(run["meta"]["sweep"]["key"], []).append(run)
    return pieces


def test_job_array_then_relaunch_skips_finished(slurm, mongo_db, small_text, tmp_path):
    server, db_name = mongo_db
    args = [
        "run",
        "--name",
        "array",
        "--executor",
        "slurm",
        "--wait",
        "-m",
        server.spec(db_name),
        "--sweep-dir",
        str(tmp_path),
        "--slurm-time",
        "10",
        "-s",
        "depth=1,2",
        *tiny_run(small_text),
    ]
    first = sweep_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr + slurm.logs()
    ids = job_ids(first.stdout)
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids.values()}) == 1  # one array of two tasks
    pieces = by_key(server, db_name, "array")
    assert sorted(pieces) == sorted(ids)
    assert all(len(p) == 1 and p[0]["status"] == "COMPLETED" for p in pieces.values())
    assert all(p[0]["config"]["depth"] == p[0]["meta"]["sweep"]["values"]["depth"] for p in pieces.values())
    again = sweep_cli(*args)
    assert again.returncode == 0 and "2 runs, 0 to run" in again.stdout and "submitted" not in again.stdout
    assert sum(len(p) for p in by_key(server, db_name, "array").values()) == 2


def test_cancel_requeue_and_resume(slurm, mongo_db, small_text, tmp_path):
    server, db_name = mongo_db

    def args(*extra):
        return [
            "run",
            "--name",
            "pre",
            "--executor",
            "slurm",
            "-m",
            server.spec(db_name),
            "--sweep-dir",
            str(tmp_path),
            "--slurm-time",
            "10",
            *extra,
            "-s",
            "seed=1,2",
            *tiny_run(small_text, epochs=15),
        ]

    launched = sweep_cli(*args())
    assert launched.returncode == 0, launched.stdout + launched.stderr
    ids = job_ids(launched.stdout)
    folder = tmp_path / "pre" / "slurm" / "%j"
    preempted, cancelled = (submitit.SlurmJob(folder=folder, job_id=ids[k]) for k in ("seed=1", "seed=2"))
    for key in ids:
        wait_for(tmp_path / "pre" / "logs" / f"{key}.log", "Epoch: 2 Train")
    preempted._interrupt()  # preemption, as submitit's own tests simulate it: SIGTERM, then SIGUSR2
    cancelled.cancel()
    # Slurm marks the job CANCELLED, unless the run checkpointed and exited within KillWait: then the job's
    # function reports the run's failure itself (runner.PREEMPT_WAIT_S < KillWait). Either way it is no success.
    errors = (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError)
    with pytest.raises(errors, match=r"CANCELLED|run seed=2 exited with status"):
        cancelled.result()
    assert preempted.result()["returncode"] == 0  # requeued, and the second piece finished
    pieces = by_key(server, db_name, "pre")
    first, second = pieces["seed=1"]
    assert (first["status"], second["status"]) == ("INTERRUPTED", "COMPLETED")
    assert 2 <= first["info"]["epoch_nr"] < 15 and second["info"]["epoch_nr"] == 15
    assert second["config"]["resume"] == str(tmp_path / "pre" / "seed=1" / "last.npz")
    log = (tmp_path / "pre" / "logs" / "seed=1.log").read_text()
    resumed = re.search(r"Resuming from \S+: epoch (\d+), step (\d+)", log)
    assert resumed and int(resumed[1]) >= 2  # continued where it stopped, not from the start
    assert (
        first["info"]["logs"]["valid_perplexity"]
        == second["info"]["logs"]["valid_perplexity"][: len(first["info"]["logs"]["valid_perplexity"])]
    )
    assert [p["status"] for p in pieces["seed=2"]] == ["INTERRUPTED"]  # scancel's SIGTERM: it checkpointed
    # The re-launch resumes the cancelled run and leaves the finished one alone.
    again = sweep_cli(*args("--wait"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 runs, 1 to run" in again.stdout and list(job_ids(again.stdout)) == ["seed=2"]
    pieces = by_key(server, db_name, "pre")
    assert [p["status"] for p in pieces["seed=2"]] == ["INTERRUPTED", "COMPLETED"] and len(pieces["seed=1"]) == 2


def test_pre_timeout_signal_requeues_as_soon_as_the_run_has_saved(slurm, mongo_db, small_text, tmp_path):
    """``scancel --signal=USR2`` (Slurm's pre-timeout signal): the run saves, and the job is requeued within
    seconds of the save, not at the end of the wait for the run (the job is killed at the time limit)."""
    server, db_name = mongo_db
    launched = sweep_cli(
        "run",
        "--name",
        "usr2",
        "--executor",
        "slurm",
        "-m",
        server.spec(db_name),
        "--sweep-dir",
        str(tmp_path),
        "--slurm-time",
        "10",
        "-s",
        "seed=1",
        *tiny_run(small_text, epochs=200),
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    [job_id] = job_ids(launched.stdout).values()
    log = tmp_path / "usr2" / "logs" / "seed=1.log"
    try:
        wait_for(log, "Epoch: 2 Train")
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        requeued, deadline = None, time.time() + 200
        while requeued is None and time.time() < deadline:
            shown = subprocess.run(
                ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30
            ).stdout
            if re.search(r"\bRestarts=[1-9]", shown):
                requeued = time.time()
            else:
                time.sleep(0.25)
        assert requeued is not None, shown + slurm.logs()
        text = log.read_text()
        assert "continue with resume=" in text, text[-3000:]  # the run stopped and saved on the signal
        saved = os.path.getmtime(tmp_path / "usr2" / "seed=1" / "last.npz")
        assert requeued - saved < 15, (requeued - saved, text[-2000:])
    finally:
        subprocess.run(["scancel", job_id], timeout=30)


def test_a_job_whose_run_is_claimed_meanwhile_leaves_it(slurm, mongo_db, small_text, tmp_path):
    """The Slurm job decides when it starts, under the run's claim: a run another launcher claimed after the
    submission (here the test, while the job waits for --begin) is left to it, with a line saying who has it."""
    server, db_name = mongo_db
    launched = sweep_cli(
        "run",
        "--name",
        "later",
        "--executor",
        "slurm",
        "-m",
        server.spec(db_name),
        "--sweep-dir",
        str(tmp_path),
        "--slurm-time",
        "10",
        "--slurm-option",
        "begin=now+8",
        "-s",
        "seed=1",
        *tiny_run(small_text),
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    [job_id] = job_ids(launched.stdout).values()
    mine = Claim(str(tmp_path / "later" / "seed=1"))
    assert mine.acquire()  # before the job may begin
    try:
        job = submitit.SlurmJob(folder=tmp_path / "later" / "slurm" / "%j", job_id=job_id)
        result = job.result()
    finally:
        mine.release()
    assert result["outcome"] == "skipped" and f"launcher pid {os.getpid()} on " in result["reason"], result
    assert f"skipped   seed=1: another launch runs it (launcher pid {os.getpid()}" in job.stdout()
    assert sweep_runs(server, db_name, "later") == []  # nothing was started
