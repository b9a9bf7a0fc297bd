"""``rhn-sweep --executor slurm`` on a real one-node Slurm cluster (the ``slurm`` fixture) into SecantusDB:
a job array, a re-launch that skips what finished, a cancelled job, and a requeue after the pre-timeout
signal (submitit's ``job._interrupt()``) that continues the run where it stopped."""
import re

import pytest

from test_sweep import sweep_cli, sweep_runs, tiny_run, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.mongo, pytest.mark.subprocess]

submitit = pytest.importorskip("submitit")


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
    args = ["run", "--name", "array", "--executor", "slurm", "--wait", "-m", server.spec(db_name),
            "--sweep-dir", str(tmp_path), "--slurm-time", "10", "-s", "depth=1,2",
            *tiny_run(small_text)]
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
        return ["run", "--name", "pre", "--executor", "slurm", "-m", server.spec(db_name), "--sweep-dir",
                str(tmp_path), "--slurm-time", "10", *extra, "-s", "seed=1,2", *tiny_run(small_text, epochs=15)]
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
    assert first["info"]["logs"]["valid_perplexity"] == \
        second["info"]["logs"]["valid_perplexity"][:len(first["info"]["logs"]["valid_perplexity"])]
    assert [p["status"] for p in pieces["seed=2"]] == ["INTERRUPTED"]  # scancel's SIGTERM: it checkpointed
    # The re-launch resumes the cancelled run and leaves the finished one alone.
    again = sweep_cli(*args("--wait"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 runs, 1 to run" in again.stdout and list(job_ids(again.stdout)) == ["seed=2"]
    pieces = by_key(server, db_name, "pre")
    assert [p["status"] for p in pieces["seed=2"]] == ["INTERRUPTED", "COMPLETED"] and len(pieces["seed=1"]) == 2
