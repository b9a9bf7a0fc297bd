"""``rhn-sweep`` with the local executor: the grid, dry run, bookkeeping in a real SecantusDB,
re-launch that skips finished runs and resumes an interrupted one exactly."""

import datetime
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from rhn_core.hyperparams import resolve_config
from rhn_core.params import ModelSpec, count_params, spec_from_config
from rhn_core.sweep import grid, state
from rhn_core.sweep.cli import main

pymongo = pytest.importorskip("pymongo")


def sweep_cli(*args, timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "rhn_core.sweep", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


def tiny_run(small_text, epochs=2):
    """Entry point and fixed updates of a character-level run of a few seconds."""
    return [
        "torch",
        "with",
        "tiny",
        "dataset=chars",
        f"data_path={small_text}",
        "batch_size=16",
        "num_steps=10",
        f"max_max_epoch={epochs}",
    ]


# --- the grid ------------------------------------------------------------------------------------
def test_product_zip_and_ranges():
    runs = grid.expand(["tiny"], {"dataset": "ptb"}, ["seed=1:3"], ["depth=1,2,4", "hidden_size=30,20,10"])
    assert [r.values for r in runs] == [
        {"seed": s, "depth": d, "hidden_size": h} for s in (1, 2) for d, h in ((1, 30), (2, 20), (4, 10))
    ]
    assert runs[0].key == "depth=1,hidden_size=30,seed=1"
    assert runs[4].config["depth"] == 2 and runs[4].config["hidden_size"] == 20 and runs[4].config["num_steps"] == 5
    assert runs[2].nr_parameters == count_params(spec_from_config(runs[2].config))
    assert [r.values["max_epoch"] for r in grid.expand([], {}, ["max_epoch=0:7:3"])] == [0, 3, 6]


def test_equal_params_picks_the_closest_hidden_size():
    target = 1.3e6
    runs = grid.expand([], {"dataset": "ptb"}, ["depth=1,2,4"], equal_params=target)
    for run in runs:
        spec = spec_from_config(run.config)
        h = run.values["hidden_size"]
        best = abs(count_params(spec) - target)
        for other in (h - 1, h + 1):  # the count grows with H, so the neighbours decide
            assert abs(count_params(ModelSpec(10000, other, spec.depth)) - target) >= best
        assert best / target < 0.01
    assert runs[0].values["hidden_size"] > runs[1].values["hidden_size"] > runs[2].values["hidden_size"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-z", "depth=1,2", "-z", "hidden_size=3"], "zipped keys need as many values each"),
        (["-s", "depth=1,2", "-s", "depth=3"], "depth is given twice"),
        (["-s", "deep=1,2"], "swept key 'deep' is not a config key"),
        (["-s", "depth"], "is not KEY=VALUE"),
        (["-s", "depth=0,1"], "depth=0 must be a positive integer"),
        (["--equal-params", "1e6", "-s", "hidden_size=3,4"], "--equal-params chooses hidden_size"),
        (["--parallel", "0"], "--parallel=0 must be at least 1"),
    ],
)
def test_bad_grids_fail_in_one_line(args, message, capsys):
    assert main(["run", "--name", "x", "--dry-run", *args, "torch", "with", "tiny"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_reserved_keys_and_missing_database(tmp_path, capsys):
    assert main(["run", "--name", "x", "torch", "with", "tiny", "save_dir=/tmp/x"]) == 2
    assert "save_dir= is set by the sweep" in capsys.readouterr().err
    assert main(["run", "--name", "x", "--sweep-dir", str(tmp_path), "torch", "with", "tiny"]) == 2
    assert "give -m ADDRESS (MongoDB) or -F DIR" in capsys.readouterr().err
    assert main(["run", "--name", "x", "-m", "h:1:db", "nowhere.py", "with", "tiny"]) == 2
    assert "entry point 'nowhere.py' not found" in capsys.readouterr().err


def test_dry_run_lists_runs_and_counts_and_starts_nothing(tmp_path, capsys):
    code = main(
        [
            "run",
            "--name",
            "d",
            "--dry-run",
            "--sweep-dir",
            str(tmp_path / "sw"),
            "-s",
            "depth=1,2,4",
            "--equal-params",
            "2.4e6",
            "torch",
            "with",
            "dataset=ptb",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "sw").exists()
    lines = [line.split() for line in out.splitlines()[1:]]
    assert [line[1].split(",")[0] for line in lines] == ["depth=1", "depth=2", "depth=4"]
    for line in lines:
        values = dict(kv.split("=") for kv in line[1].split(","))
        cfg = resolve_config(dataset="ptb", **{k: int(v) for k, v in values.items()})
        assert int(line[2].replace(",", "")) == count_params(spec_from_config(cfg))


# --- state of a run from its pieces --------------------------------------------------------------
def test_state_of_pieces():
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    fresh, old = now - datetime.timedelta(seconds=30), now - datetime.timedelta(seconds=600)
    assert state.state([], now=now) == ("not started", "start")
    assert state.state([{"status": "FAILED"}, {"status": "COMPLETED"}], now=now) == ("COMPLETED", "skip")
    assert state.state([{"status": "INTERRUPTED"}], now=now) == ("INTERRUPTED", "resume")
    assert state.state([{"status": "RUNNING", "heartbeat": fresh.replace(tzinfo=None)}], now=now)[1] == "skip"
    shown, action = state.state([{"status": "RUNNING", "heartbeat": old.isoformat()}], now=now)
    assert action == "resume" and shown == "RUNNING (silent 600 s)"
    pieces = state.pieces_by_key(
        [{"id": 7, "meta": {"sweep": {"key": "a"}}}, {"id": 3, "meta": {"sweep": {"key": "a"}}}, {"id": 5, "meta": {}}]
    )
    assert list(pieces) == ["a"] and [p["id"] for p in pieces["a"]] == [3, 7]


def test_resume_source_prefers_disk(tmp_path):
    pieces = [{"artifacts": {"last.npz": "db#1"}}, {"artifacts": {}}]
    assert state.resume_source(pieces, str(tmp_path)) == "db#1"
    (tmp_path / "last.npz").write_bytes(b"x")
    assert state.resume_source(pieces, str(tmp_path)) == str(tmp_path / "last.npz")
    assert state.resume_source([], str(tmp_path / "none")) == ""


# --- a real local sweep ------------------------------------------------------------------------
def sweep_runs(server, db_name, name):
    with pymongo.MongoClient(server.url, serverSelectionTimeoutMS=10000) as client:
        return sorted(client[db_name].runs.find({"meta.sweep.name": name}), key=lambda r: r["_id"])


@pytest.mark.slow  # a whole run through the entry point (5-12 s idle)
def test_local_sweep_logs_runs_and_relaunch_skips_them(mongo_db, small_text, tmp_path):
    pytest.importorskip("torch")  # the sweep's runs train with the torch backend
    server, db_name = mongo_db
    args = [
        "run",
        "--name",
        "grid",
        "-m",
        server.spec(db_name),
        "--sweep-dir",
        str(tmp_path),
        "--parallel",
        "2",
        "-s",
        "depth=1,2",
        *tiny_run(small_text),
    ]
    first = sweep_cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 runs, 2 to run (1 thread(s) each)" in first.stdout and "2 of 2 runs ended well" in first.stdout
    runs = sorted(sweep_runs(server, db_name, "grid"), key=lambda r: r["config"]["depth"])
    assert [(r["status"], r["meta"]["sweep"]["values"], r["config"]["depth"]) for r in runs] == [
        ("COMPLETED", {"depth": 1}, 1),
        ("COMPLETED", {"depth": 2}, 2),
    ]
    for r in runs:
        assert r["meta"]["sweep"]["key"] == f"depth={r['config']['depth']}"
        assert r["config"]["save_dir"] == str(tmp_path / "grid" / f"depth={r['config']['depth']}")
    log = (tmp_path / "grid" / "logs" / "depth=1.log").read_text()
    assert "Full Test Perplexity" in log
    again = sweep_cli(*args)
    assert again.returncode == 0 and "2 runs, 0 to run" in again.stdout and again.stdout.count("skip") == 2
    assert len(sweep_runs(server, db_name, "grid")) == 2  # nothing new was started
    status = sweep_cli("status", "--name", "grid", "-m", server.spec(db_name), "--sweep-dir", str(tmp_path))
    assert status.returncode == 0 and "2 COMPLETED" in status.stdout
    row = [line for line in status.stdout.splitlines() if line.startswith("depth=2")][0].split()
    assert row[2] == "COMPLETED" and row[4] == "2" and row[5] == f"{runs[1]['info']['best_valid_bits']:.3f}"


def wait_for(path, text, timeout_s=240):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if os.path.isfile(path) and text in open(path).read():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.slow  # over 10 s: a real sweep, interrupted and relaunched
def test_interrupted_sweep_resumes_exactly_on_relaunch(mongo_db, small_text, tmp_path):
    """SIGTERM to the sweep: its run checkpoints; the re-launch resumes it and ends as a twin never stopped."""
    pytest.importorskip("torch")
    server, db_name = mongo_db
    common = [
        "-m",
        server.spec(db_name),
        "--sweep-dir",
        str(tmp_path),
        "--threads",
        "1",
        "-s",
        "seed=3",
        *tiny_run(small_text, epochs=15),
    ]
    stopped, twin = (
        subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "rhn_core.sweep", "run", "--name", name, *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONPATH=REPO),
        )
        for name in ("cut", "whole")
    )  # whole: the same run, never stopped
    try:
        wait_for(tmp_path / "cut" / "logs" / "seed=3.log", "Epoch: 3 Train")
    finally:
        stopped.send_signal(signal.SIGTERM)
        out = stopped.communicate(timeout=120)[0]
        twin_out = twin.communicate(timeout=300)[0]
    assert twin.returncode == 0, twin_out
    assert stopped.returncode == 1 and "0 of 1 runs ended well" in out and "launch again to resume" in out
    [piece] = sweep_runs(server, db_name, "cut")
    assert piece["status"] == "INTERRUPTED" and 3 <= piece["info"]["epoch_nr"] < 15
    status = sweep_cli("status", "--name", "cut", "-m", server.spec(db_name), "--sweep-dir", str(tmp_path))
    row = [line for line in status.stdout.splitlines() if line.startswith("seed=3")][0].split()
    best = min(piece["info"]["logs"]["valid_perplexity"][1:])  # the epochs it finished; no final figures yet
    assert row[2] == "INTERRUPTED" and row[5:7] == [f"{math.log2(best):.3f}", "bpc"], status.stdout
    again = sweep_cli("run", "--name", "cut", *common)
    assert again.returncode == 0 and f"resume {tmp_path / 'cut' / 'seed=3' / 'last.npz'}" in again.stdout
    first, second = sweep_runs(server, db_name, "cut")
    assert second["status"] == "COMPLETED" and second["config"]["resume"].endswith("seed=3/last.npz")
    [whole] = sweep_runs(server, db_name, "whole")
    assert second["info"]["logs"] == whole["info"]["logs"]  # every epoch's figures, exactly
    assert second["info"]["full_test_perplexity"] == whole["info"]["full_test_perplexity"]
    status = sweep_cli("status", "--name", "cut", "-m", server.spec(db_name), "--sweep-dir", str(tmp_path))
    row = [line for line in status.stdout.splitlines() if line.startswith("seed=3")][0].split()
    assert row[2:4] == ["COMPLETED", "2"]  # one run, two pieces


def test_grid_words_and_their_one_line_errors():
    from rhn_core.errors import RHNError

    assert grid.parse_fixed([]) == ([], {})
    assert grid.parse_fixed(["with"]) == ([], {})
    assert grid.parse_fixed(["with", "tiny", "depth=2", "data_path=/x/a=b"]) == (
        ["tiny"],
        {"depth": 2, "data_path": "/x/a=b"},  # only the first = splits
    )
    assert grid.parse_fixed(["tiny"]) == (["tiny"], {})
    cases = [
        (lambda: grid.parse_fixed(["=3"]), "update '=3' is not KEY=VALUE: write e.g. depth=1,2,4"),
        (lambda: grid.expand([], {}, ["depth"]), "-s 'depth' is not KEY=VALUE: write e.g. depth=1,2,4"),
        (lambda: grid.expand([], {}, (), ["1x=2"]), "-z '1x=2' is not KEY=VALUE: write e.g. depth=1,2,4"),
        (lambda: grid.expand([], {}, ["depth= , "]), "depth=',' gives no values: write e.g. depth=1,2,4 or depth=1:4"),
        (
            lambda: grid.expand([], {}, (), ["seed=3:1"]),
            "seed='3:1' gives no values: write e.g. seed=1,2,4 or seed=1:4",
        ),
    ]
    for call, message in cases:
        with pytest.raises(RHNError) as e:
            call()
        assert str(e.value) == message


def test_fixed_updates_and_named_configs_reach_every_run(small_text):
    runs = grid.expand(["tiny"], {"dataset": "ptb", "num_steps": 7}, ["depth=1,2"])
    assert [(r.config["num_steps"], r.config["batch_size"]) for r in runs] == [(7, 4), (7, 4)]  # fixed, tiny
    chars = {"dataset": "chars", "data_path": small_text, "num_steps": 7}
    sized = grid.expand(["tiny"], chars, ["depth=1,2"], equal_params=20000)
    vocab = grid.vocab_size(sized[0].config)
    assert vocab == len(set(open(small_text, "rb").read())) and vocab < 100  # read from the text
    for run in sized:  # the parameter count of the text's vocabulary, not of a default one
        assert (run.config["num_steps"], run.config["batch_size"]) == (7, 4)
        spec = spec_from_config(run.config, vocab)
        assert abs(count_params(spec) - 20000) / 20000 < 0.05, count_params(spec)
        assert run.values["hidden_size"] == run.config["hidden_size"]
