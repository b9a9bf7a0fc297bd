"""``python -m rhn_core.tracking.report``: synthetic Sacred runs on disk and in MongoDB, table, plot, errors."""

import json
import re
import statistics
import subprocess
import sys
import time

import pytest

from conftest import REPO
from mongo_server import free_port
from rhn_core.tracking.report import main

PNG = b"\x89PNG\r\n\x1a\n"
# (id, status, dataset, depth, info, valid_perplexity per epoch); ids out of depth order on purpose.
RUNS = [
    (3, "COMPLETED", "ptb", 1, {"best_valid_perplexity": 90.5, "full_test_perplexity": 88.25}, [120.0, 90.5, 91.0]),
    (1, "COMPLETED", "ptb", 2, {"best_valid_perplexity": 75.25, "full_test_perplexity": 73.5}, [100.0, 75.25]),
    (4, "COMPLETED", "ptb", 4, {"best_valid_perplexity": 68.0, "full_test_perplexity": 66.0}, [95.0, 70.0, 68.0]),
    (2, "INTERRUPTED", "ptb", 8, {"best_valid_perplexity": 66.5}, [66.5, 80.0]),
    (5, "FAILED", "ptb", 3, None, []),
    (
        6,
        "COMPLETED",
        "enwik8",
        2,
        {"best_valid_perplexity": 2.5, "best_valid_bits": 1.3219, "full_test_perplexity": 2.4},
        [3.0, 2.5],
    ),
]


def sacred_docs():
    """(run document, metric documents) per run, as Sacred's observers write them."""
    for run_id, status, dataset, depth, info, valid in RUNS:
        config = {"dataset": dataset, "depth": depth, "hidden_size": 830, "optim": {"lr": 0.1 * depth}}
        full_info = (
            None
            if info is None
            else {
                "nr_parameters": 1_234_567 * depth,
                "epoch_nr": len(valid),
                "best_val_epoch": valid.index(min(valid)) + 1,
                **info,
            }
        )
        metrics = (
            {
                "valid_perplexity": {
                    "steps": list(range(1, len(valid) + 1)),
                    "values": valid,
                    "timestamps": ["2024-01-01T00:00:00"] * len(valid),
                }
            }
            if valid
            else {}
        )
        run = {
            "_id": run_id,
            "status": status,
            "command": "main",
            "config": config,
            "info": full_info or {},
            "host": {"hostname": "box"},
            "experiment": {"name": "rhn"},
            "captured_out": "x" * 1000,
            "artifacts": [],
            "start_time": None,
            "heartbeat": None,
        }
        yield run, metrics


def write_dir(root):
    """A FileStorageObserver folder with RUNS (plus the ``_sources`` folder Sacred adds)."""
    (root / "_sources").mkdir(parents=True)
    for run, metrics in sacred_docs():
        d = root / str(run["_id"])
        d.mkdir()
        (d / "run.json").write_text(
            json.dumps({k: run[k] for k in ("status", "command", "host", "experiment")} | {"artifacts": []})
        )
        (d / "config.json").write_text(json.dumps(run["config"]))
        if run["info"]:  # Sacred writes info.json only for runs that set some info
            (d / "info.json").write_text(json.dumps(run["info"]))
        (d / "metrics.json").write_text(json.dumps(metrics))
    return str(root)


def fill_mongo(server, db_name):
    import pymongo

    with pymongo.MongoClient(server.url, serverSelectionTimeoutMS=5000) as client:
        db = client[db_name]
        for run, metrics in sacred_docs():
            db.runs.insert_one(run)
            for name, m in metrics.items():
                db.metrics.insert_one({"run_id": run["_id"], "name": name, **m})
    return server.spec(db_name)


@pytest.fixture(params=["dir", "mongo"])
def source(request, tmp_path):
    """The command-line arguments naming the synthetic runs in either layout."""
    if request.param == "dir":
        return ["--dir", write_dir(tmp_path / "runs")]
    server, db_name = request.getfixturevalue("mongo_db")
    return ["--mongo", fill_mongo(server, db_name)]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(out):
    """The table's rows as lists of cells (columns are separated by at least two spaces)."""
    lines = out.splitlines()
    count = int(lines[0].split()[0])  # "N runs from ..."
    header = re.split(r"\s{2,}", lines[1].strip())
    body = [re.split(r"\s{2,}", line.strip()) for line in lines[2 : 2 + count]]
    assert all(len(cells) == len(header) for cells in body), out
    return [dict(zip(header, cells)) for cells in body]


def test_table_and_plot(source, tmp_path, capsys):
    png = tmp_path / "out" / "depth.png"
    png.parent.mkdir()
    code, out, err = run(capsys, *source, "--plot", str(png), "--logy")
    assert code == 0, err
    assert out.splitlines()[0].startswith("6 runs from ")
    if source[0] == "--mongo":
        assert re.search(r"\(database rhn_test_\w+, collection runs\)", out.splitlines()[0])
    table = rows(out)
    # Sorted by (dataset, depth, id): enwik8 first, then ptb by depth.
    assert [r["id"] for r in table] == ["6", "3", "1", "5", "4", "2"]
    assert [r["depth"] for r in table] == ["2", "1", "2", "3", "4", "8"]
    by_id = {r["id"]: r for r in table}
    assert by_id["1"]["best valid"] == "75.25 ppl" and by_id["1"]["full test"] == "73.50 ppl"
    assert by_id["6"]["best valid"] == "1.322 bpc"  # character level reads in bits per character
    assert by_id["6"]["full test"] == "1.263 bpc"  # log2(2.4), no full_test_bits stored
    assert by_id["4"]["params"] == "4,938,268" and by_id["4"]["epochs"] == "3" and by_id["4"]["best epoch"] == "3"
    assert by_id["5"]["status"] == "FAILED" and by_id["5"]["best valid"] == "-" and by_id["5"]["params"] == "-"
    assert by_id["2"]["full test"] == "-"
    assert by_id["6"]["best_valid_perplexity"] == "2.5"  # the y column, since enwik8 shows bpc
    assert "1 of 6 runs lack depth or best_valid_perplexity: left out of the plot" in out
    data = png.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    assert [p.name for p in png.parent.iterdir()] == ["depth.png"]  # no temporary file left behind


def test_metric_minimum(source, tmp_path, capsys):
    code, out, err = run(capsys, *source, "--y", "valid_perplexity", "--x", "optim.lr", "--no-plot")
    assert code == 0, err
    table = rows(out)
    assert "min valid_perplexity" in out.splitlines()[1] and "optim.lr" in out.splitlines()[1]
    assert {r["id"]: r["min valid_perplexity"] for r in table} == {
        "1": "75.25",
        "2": "66.50",
        "3": "90.50",
        "4": "68.00",
        "5": "-",
        "6": "2.5",
    }
    assert [r["id"] for r in table] == ["6", "3", "1", "5", "4", "2"]  # optim.lr orders as depth does
    assert "left out of the plot" not in out and not (tmp_path / "rhn_report.png").exists()


def test_status_filter(source, tmp_path, capsys):
    png = tmp_path / "s.png"
    code, out, err = run(capsys, *source, "--status", "completed", "--status", "INTERRUPTED,", "--plot", str(png))
    assert code == 0, err
    assert out.splitlines()[0].endswith("status COMPLETED, INTERRUPTED")
    assert sorted(r["id"] for r in rows(out)) == ["1", "2", "3", "4", "6"]
    assert "left out of the plot" not in out and png.read_bytes().startswith(PNG)
    code, out, err = run(capsys, *source, "--status", "FAILED", "--no-plot")
    assert code == 0 and [(r["id"], r["status"]) for r in rows(out)] == [("5", "FAILED")]
    code, out, err = run(capsys, *source, "--status", "RUNNING", "--no-plot")
    assert code == 2 and err.count("\n") == 1 and "no runs with status RUNNING" in err


def test_group_by_other_key(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "--dir",
        write_dir(tmp_path / "runs"),
        "--group",
        "hidden_size",
        "--x",
        "dataset",
        "--plot",
        str(tmp_path / "g.png"),
    )
    assert code == 0, err
    assert [r["dataset"] for r in rows(out)] == ["enwik8"] + ["ptb"] * 5
    assert (tmp_path / "g.png").read_bytes().startswith(PNG)


@pytest.mark.slow  # over 5 s on an idle 2-core machine (starts the entry point): out of the fast tier
def test_password_never_printed(capsys):
    """The whole command, as a user runs it, against a port where no server listens."""
    url = f"mongodb://user:secret@127.0.0.1:{free_port()}/rhn?authSource=admin"
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "rhn_core.tracking.report", "--mongo", url, "--no-plot"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    # Fails fast: our 5 s server-selection timeout, not pymongo's default 30 s (the rest is interpreter
    # start-up, which takes seconds on a loaded machine).
    assert time.time() - start < 25
    assert code == 2 and "secret" not in out + err and "Traceback" not in err
    assert err.startswith("error: cannot reach MongoDB at mongodb://user:***@127.0.0.1") and err.count("\n") == 1
    code, out, err = run(capsys, "--mongo", "mongodb://user:secret@host:notaport/db")
    assert code == 2 and "secret" not in out + err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dir", "{tmp}/missing"], "no such folder"),
        (["--dir", "{tmp}/empty"], "no runs in"),
        (["--dir", "{tmp}/runs", "--x", "no_such_key"], "no run has config key 'no_such_key'"),
        (["--dir", "{tmp}/runs", "--y", "no_such_metric"], "no run has info key or metric 'no_such_metric'"),
        (["--dir", "{tmp}/runs", "--plot", "{tmp}/missing/p.png"], "cannot write the plot"),
        (["--mongo", "a b c"], "bad MongoDB address"),
        (["--dir", "{tmp}/runs", "--mongo", "db"], "not allowed with"),
        ([], "one of the arguments --mongo --dir is required"),
    ],
)
def test_bad_inputs(argv, message, tmp_path, capsys):
    write_dir(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in out + err


def write_sweep_dir(root):
    """A file-observer folder with the runs of sweep ``s``: depths 1 and 2, seeds 1-3, one run in two pieces,
    plus a run of another sweep and one of none."""
    root.mkdir()
    ppl = {(1, 1): 100.0, (1, 2): 104.0, (1, 3): 108.0, (2, 1): 90.0, (2, 2): 91.0, (2, 3): None}
    runs = [(depth, seed, ppl[depth, seed], "COMPLETED") for depth, seed in sorted(ppl)]
    runs.insert(0, (1, 1, 500.0, "INTERRUPTED"))  # an earlier piece of (1, 1): superseded by the later one
    runs.append((2, 3, None, "RUNNING"))  # its latest piece is still running
    for i, (depth, seed, value, status) in enumerate(runs, 1):
        meta = {"sweep": {"name": "s", "key": f"depth={depth},seed={seed}", "values": {"depth": depth, "seed": seed}}}
        if (depth, seed) == (2, 3) and status == "COMPLETED":
            continue
        d = root / str(i)
        d.mkdir()
        (d / "run.json").write_text(json.dumps({"status": status, "meta": meta, "artifacts": []}))
        (d / "config.json").write_text(json.dumps({"dataset": "ptb", "depth": depth, "seed": seed}))
        info = {"nr_parameters": 1000 * depth} | ({"best_valid_perplexity": value} if value else {})
        (d / "info.json").write_text(json.dumps(info))
    other = root / "99"
    other.mkdir()
    (other / "run.json").write_text(
        json.dumps(
            {"status": "COMPLETED", "meta": {"sweep": {"name": "other", "key": "depth=1", "values": {"depth": 1}}}}
        )
    )
    (other / "config.json").write_text(json.dumps({"dataset": "ptb", "depth": 1}))
    (other / "info.json").write_text(json.dumps({"best_valid_perplexity": 1.0}))
    return str(root)


def test_sweep_groups_latest_pieces_mean_std_and_error_bars(tmp_path, capsys):
    plot = tmp_path / "sweep.png"
    code, out, err = run(capsys, "--dir", write_sweep_dir(tmp_path / "runs"), "--sweep", "s", "--plot", str(plot))
    assert code == 0, err
    assert "6 runs (7 pieces)" in out and "mean and std over seed" in out
    table = {r[0]: r for r in (line.split() for line in out.splitlines()) if r and r[0] in ("1", "2")}
    # depth 1: the later piece of seed 1 counts (100, not 500): mean 104, sample std 4
    assert table["1"][1:] == ["3", "3", "COMPLETED", "1,000", "3", "104.000", "4.000"]
    # depth 2: seed 3 is still running (no figure): two values, mean 90.5, std sqrt(0.5)
    assert table["2"][1:6] == ["3", "2", "COMPLETED,", "1", "RUNNING"] and table["2"][-3:] == ["2", "90.500", "0.707"]
    assert plot.read_bytes().startswith(PNG)
    code, out, _ = run(
        capsys,
        "--dir",
        str(tmp_path / "runs"),
        "--sweep",
        "s",
        "--over",
        "seed",
        "--over",
        "depth",
        "--status",
        "COMPLETED",
        "--no-plot",
    )
    assert code == 0 and out.splitlines()[-1].split()[-2:] == [
        "98.600",
        f"{statistics.stdev([100, 104, 108, 90, 91]):.3f}",
    ]
    code, _, err = run(capsys, "--dir", str(tmp_path / "runs"), "--sweep", "nope", "--no-plot")
    assert code == 2 and "no run of sweep 'nope'" in err and err.count("\n") == 1
