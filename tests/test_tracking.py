"""Runs logged to a real MongoDB server and read back with pymongo and GridFS.

The server is SecantusDB started by the suite (``mongo``/``private_mongo``
fixtures), or the one ``RHN_TEST_MONGO_URL`` names. Tests that stop and
restart the server always use a SecantusDB of their own.
"""

import io
import json
import os
import subprocess
import sys
import time

import bson
import numpy as np
import pytest

pymongo = pytest.importorskip("pymongo")
import gridfs  # noqa: E402  (part of pymongo)

from conftest import REPO, backend_params, native_updates, run_experiment  # noqa: E402
from rhn_core.backends import BACKENDS  # noqa: E402
from mongo_server import free_port, unique_db  # noqa: E402
from rhn_core.tracking import upload  # noqa: E402
from rhn_core.tracking.mongo import redact  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.mongo, pytest.mark.subprocess]

ARTIFACTS = {"best.npz", "last.npz", "learning_curve.png"}
METRICS = {
    "train_perplexity",
    "valid_perplexity",
    "test_perplexity",
    "train_bits",
    "valid_bits",
    "test_bits",
    "learning_rate",
    "epoch_seconds",
    "chars_per_second",
    "full_best_valid_perplexity",
    "full_test_perplexity",
}


def tiny(small_text, save_dir, epochs=2, *extra):
    """Config updates of a character-level run that takes a fraction of a second per epoch."""
    return [
        "tiny",
        "dataset=chars",
        f"data_path={small_text}",
        "batch_size=16",
        "num_steps=10",
        f"max_max_epoch={epochs}",
        f"save_dir={save_dir}",
        *extra,
    ]


def cli(*args, backend="torch"):
    return [sys.executable, "-W", "ignore", os.path.join(REPO, f"rhn_train_{backend}.py"), *args]


def run_cli(*args, timeout=300, cwd=None, **kw):
    return subprocess.run(cli(*args, **kw), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def database(server, name):
    client = pymongo.MongoClient(server.url, serverSelectionTimeoutMS=10000)
    return client[name]


def stored_file(db, run, name):
    file_id = {a["name"]: a["file_id"] for a in run["artifacts"]}[name]
    return gridfs.GridFS(db).get(file_id).read()


def check_complete_run(db, run_id, epochs, save_dir=None):
    """Everything a finished training run must have stored, for run ``run_id``."""
    run = db.runs.find_one({"_id": run_id})
    assert run["status"] == "COMPLETED", run.get("fail_trace")
    assert run["format"] == "MongoObserver-0.7.0" and run["experiment"]["name"] == "rhn_prediction"
    assert run["config"]["max_max_epoch"] == epochs and run["host"]["hostname"]
    info = run["info"]
    assert info["epoch_nr"] == epochs and info["nr_parameters"] > 0
    for key in (
        "best_val_epoch",
        "best_valid_perplexity",
        "full_best_valid_perplexity",
        "full_test_perplexity",
        "full_test_bits",
    ):
        assert isinstance(info[key], (int, float)), key
    metrics = {m["name"]: m for m in db.metrics.find({"run_id": run_id})}
    assert set(metrics) == METRICS
    assert metrics["valid_perplexity"]["steps"] == list(range(1, epochs + 1))  # steps are epochs
    assert metrics["valid_perplexity"]["values"] == pytest.approx(info["logs"]["valid_perplexity"][1:])
    assert {m["id"] for m in info["metrics"]} == {str(m["_id"]) for m in metrics.values()}
    assert {a["name"] for a in run["artifacts"]} == ARTIFACTS
    # one stored file per artifact, however many times last.npz was replaced
    names = [f.filename for f in gridfs.GridFS(db).find({"filename": {"$regex": f"^artifact://runs/{run_id}/"}})]
    assert sorted(names) == sorted(f"artifact://runs/{run_id}/{n}" for n in ARTIFACTS)
    with np.load(io.BytesIO(stored_file(db, run, "last.npz"))) as z:
        assert int(z["train_state/epoch"]) == epochs + 1
    if save_dir is not None:
        assert stored_file(db, run, "last.npz") == open(os.path.join(save_dir, "last.npz"), "rb").read()
    assert stored_file(db, run, "learning_curve.png").startswith(b"\x89PNG")
    assert f"Epoch: {epochs} Valid Perplexity" in run["captured_out"]
    sources = dict(run["experiment"]["sources"])
    assert b"def make_experiment" in gridfs.GridFS(db).get(sources["rhn_core/experiment.py"]).read()
    return run


@pytest.mark.parametrize("backend", backend_params())
def test_run_is_stored_in_mongodb(mongo_db, small_text, tmp_path, backend):
    server, name = mongo_db
    named, updates = (
        ["tiny"],
        dict(
            dataset="chars",
            data_path=small_text,
            batch_size=16,
            num_steps=10,
            max_max_epoch=2,
            save_dir=str(tmp_path),
            **native_updates(backend),
        ),
    )
    run = run_experiment("main", named, backend=backend, options={"--mongo_db": server.spec(name)}, **updates)
    db = database(server, name)
    doc = check_complete_run(db, run._id, 2, save_dir=tmp_path)
    assert doc["config"]["hidden_size"] == run.config["hidden_size"]
    assert doc["result"] == pytest.approx(doc["info"]["best_valid_perplexity"])
    assert doc["meta"]["options"]["--mongo_db"] == redact(server.spec(name))
    recorded = {d.split("==")[0] for d in doc["experiment"]["dependencies"]}
    assert recorded & set(BACKENDS[backend].distributions), recorded  # the framework's version is stored


def test_file_observer_stores_the_same_run(small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    result = run_cli("-F", str(tmp_path / "obs"), "with", *tiny(small_text, tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "obs" / "1"
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "COMPLETED" and sorted(run["artifacts"]) == sorted(ARTIFACTS)  # no repeats
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == METRICS and metrics["valid_perplexity"]["steps"] == [1, 2]
    assert (folder / "last.npz").read_bytes() == (tmp_path / "ckpt" / "last.npz").read_bytes()
    info = json.loads((folder / "info.json").read_text())
    assert info["full_test_perplexity"] > 1


def test_long_run_document_stays_small(mongo_db, small_text, tmp_path):
    """Progress bars on: what is stored per epoch is a few printed lines, so 16 MB is never near."""
    pytest.importorskip("torch")  # the runs here train with the torch backend
    server, name = mongo_db
    db = database(server, name)
    sizes = {}
    for epochs in (2, 42):
        run = run_experiment(
            "main",
            ["tiny"],
            options={"--mongo_db": server.spec(name)},
            progress=True,
            dataset="chars",
            data_path=small_text,
            batch_size=16,
            num_steps=10,
            hidden_size=8,
            max_max_epoch=epochs,
            save_dir=str(tmp_path / str(epochs)),
        )
        doc = db.runs.find_one({"_id": run._id})
        assert doc["status"] == "COMPLETED" and "it/s" not in doc["captured_out"]
        assert "\r" not in doc["captured_out"] and "\x1b[" not in doc["captured_out"]
        sizes[epochs] = len(bson.encode(doc))
    per_epoch = (sizes[42] - sizes[2]) / 40
    print(f"run document: {sizes[2]:,} bytes after 2 epochs, {sizes[42]:,} after 42: {per_epoch:.0f} bytes/epoch")
    assert per_epoch < 1000 and sizes[2] + per_epoch * 10_000 < 16 * 2**20  # 10,000 epochs still fit


def test_unreachable_server_fails_fast_in_one_line(small_text, tmp_path):
    port = free_port()  # nothing listens there
    start = time.time()
    result = run_cli(
        "-m", f"mongodb://rhnuser:s3cret@127.0.0.1:{port}/rhn?authSource=admin", "with", *tiny(small_text, tmp_path)
    )
    assert result.returncode != 0 and time.time() - start < 60
    assert "Traceback" not in result.stderr and "s3cret" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("RHNError: cannot reach MongoDB at mongodb://rhnuser:***@127.0.0.1")
        and "--mongo_fallback" in last
    )
    assert not (tmp_path / "last.npz").exists()  # no training without its record


def test_unreachable_with_fallback_keeps_run_on_disk_then_upload(private_mongo, small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    private_mongo.stop()
    name = unique_db()
    result = run_cli(
        "-m",
        private_mongo.spec(name),
        "--mongo_fallback",
        str(tmp_path / "kept"),
        "with",
        *tiny(small_text, tmp_path / "ckpt"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "this run is kept in" in result.stderr
    assert "or add --mongo_fallback" not in result.stderr  # it was given: the warning does not ask for it
    folder = tmp_path / "kept" / "1"
    assert json.loads((folder / "run.json").read_text())["status"] == "COMPLETED"
    private_mongo.start()
    assert upload.main([str(folder), "-m", private_mongo.spec(name)]) == 0
    check_complete_run(database(private_mongo, name), 1, 2, save_dir=tmp_path / "ckpt")
    assert upload.main([str(folder), "-m", private_mongo.spec(name)]) == 0  # again: same run, no copy
    db = database(private_mongo, name)
    assert db.runs.count_documents({}) == 1
    check_complete_run(db, 1, 2)


def _wait_for(predicate, timeout_s, what):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _start_long_run(server, name, small_text, save_dir, epochs, *extra):
    # serverSelectionTimeoutMS in the URL: the retries of a lost server are quicker than the 5 s default
    url = f"{server.url}/{name}?serverSelectionTimeoutMS=1000"
    proc = subprocess.Popen(
        cli("-m", url, "-b", "0.5", *extra, "with", *tiny(small_text, save_dir, epochs, "hidden_size=48", "threads=1")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = database(server, name)
    _wait_for(
        lambda: db.metrics.find_one({"name": "valid_perplexity", "steps.0": 1}) is not None,
        120,
        "the first epoch in MongoDB",
    )
    return proc


def test_server_lost_mid_run_and_back(private_mongo, small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    name, epochs = unique_db(), 30
    proc = _start_long_run(
        private_mongo, name, small_text, tmp_path / "ckpt", epochs, "--mongo_fallback", str(tmp_path / "kept")
    )
    private_mongo.stop()
    time.sleep(3)
    assert proc.poll() is None, "the run ended before the server came back: make it longer"
    private_mongo.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "cannot be written" in err and "is back" in err
    check_complete_run(database(private_mongo, name), 1, epochs, save_dir=tmp_path / "ckpt")
    assert not (tmp_path / "kept" / "mongo_1").exists()  # kept only while the server was away


def test_server_lost_until_the_end_keeps_run_then_upload(private_mongo, small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    name, epochs = unique_db(), 6
    proc = _start_long_run(
        private_mongo, name, small_text, tmp_path / "ckpt", epochs, "--mongo_fallback", str(tmp_path / "kept")
    )
    private_mongo.stop()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]  # training was not killed
    kept = tmp_path / "kept" / "mongo_1"
    assert f"python -m rhn_core.tracking.upload {kept}" in err
    assert json.loads((kept / "run.json").read_text())["status"] == "COMPLETED"
    assert json.loads((kept / "metrics.json").read_text())["valid_perplexity"]["steps"] == list(range(1, epochs + 1))
    private_mongo.start()
    assert upload.main([str(kept)]) == 0  # the folder remembers its (password-free) address
    check_complete_run(database(private_mongo, name), 1, epochs, save_dir=tmp_path / "ckpt")


def _epochs_trained(last_npz):
    """How many epochs the run whose ``last.npz`` this is has finished (0 before the first)."""
    try:
        with np.load(last_npz) as z:
            return int(z["train_state/epoch"]) - 1
    except (OSError, ValueError, KeyError):  # not written yet
        return 0


def _kept_metrics(folder):
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):  # not kept (yet)
        return {}


def test_run_killed_during_an_outage_keeps_every_epoch_on_disk_and_uploads_whole(private_mongo, small_text, tmp_path):
    """While MongoDB is away the run is kept on disk as it goes, not only when it ends: a run killed
    (SIGKILL: no end event, no last write) during the outage leaves a kept copy with every epoch it had
    finished, up to ones trained after the server went away, and that copy completes the run in MongoDB."""
    pytest.importorskip("torch")  # the runs here train with the torch backend
    name, ckpt, kept = unique_db(), tmp_path / "ckpt", tmp_path / "kept" / "mongo_1"
    proc = _start_long_run(private_mongo, name, small_text, ckpt, 10_000, "--mongo_fallback", str(tmp_path / "kept"))
    try:
        private_mongo.stop()
        target = _epochs_trained(ckpt / "last.npz") + 3  # at least two epochs wholly trained during the outage
        _wait_for(lambda: _epochs_trained(ckpt / "last.npz") >= target, 180, f"epoch {target} trained")
        # ...and kept on disk while the run lives (a heartbeat and a failed write behind training)
        _wait_for(
            lambda: len(_kept_metrics(kept).get("valid_perplexity", {}).get("steps", [])) >= target,
            60,
            f"epoch {target} in the kept copy {kept}",
        )
        assert proc.poll() is None, "the run ended by itself: it must be killed during the outage"
    finally:
        proc.kill()  # SIGKILL
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == -9, err[-2000:]
    assert "cannot be written" in err and str(kept) in err

    metrics = _kept_metrics(kept)
    epochs = metrics["valid_perplexity"]["steps"]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= target  # none missing, none repeated
    assert set(metrics) == {m for m in METRICS if not m.startswith("full_")}  # per-epoch series; no final pass
    for series in metrics.values():  # a heartbeat may fall inside an epoch's records: at most one behind
        assert series["steps"] == list(range(1, len(series["steps"]) + 1)) and len(series["steps"]) >= target - 1
    run = json.loads((kept / "run.json").read_text())
    assert run["status"] == "RUNNING" and set(run["artifacts"]) == {"best.npz", "last.npz"}
    assert _epochs_trained(kept / "last.npz") >= len(epochs)  # the checkpoint is at least as new as the metrics
    assert f"Epoch: {len(epochs)} Valid Perplexity" in (kept / "cout.txt").read_text()

    private_mongo.start()
    assert upload.main([str(kept)]) == 0  # the folder remembers its (password-free) address
    db = database(private_mongo, name)
    assert [r["_id"] for r in db.runs.find()] == [1]  # the kept copy completes the run it began, no second run
    doc = db.runs.find_one({"_id": 1})
    assert doc["status"] == "RUNNING" and doc["config"]["max_max_epoch"] == 10_000
    assert doc["captured_out"] == (kept / "cout.txt").read_text()
    stored = {m["name"]: m for m in db.metrics.find({"run_id": 1})}
    assert set(stored) == set(metrics)
    for metric, series in metrics.items():
        assert stored[metric]["steps"] == series["steps"], metric
        assert stored[metric]["values"] == pytest.approx(series["values"], rel=1e-12), metric
    assert {m["id"] for m in doc["info"]["metrics"]} == {str(m["_id"]) for m in stored.values()}
    for artifact in ("best.npz", "last.npz"):
        assert stored_file(db, doc, artifact) == (kept / artifact).read_bytes(), artifact
    names = [f.filename for f in gridfs.GridFS(db).find({"filename": {"$regex": "^artifact://runs/1/"}})]
    assert sorted(names) == ["artifact://runs/1/best.npz", "artifact://runs/1/last.npz"]  # one file each


def test_two_concurrent_runs_land_complete(mongo_db, small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    server, name = mongo_db
    procs = [
        subprocess.Popen(
            cli("-m", server.spec(name), "with", *tiny(small_text, tmp_path / str(i), 3, f"seed={i}")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    db = database(server, name)
    runs = {run["config"]["seed"]: run["_id"] for run in db.runs.find()}
    assert sorted(runs.values()) == [1, 2]
    for seed, run_id in runs.items():
        check_complete_run(db, run_id, 3, save_dir=tmp_path / str(seed))


def test_resume_from_a_run_in_mongodb(mongo_db, small_text, tmp_path):
    """A run stopped on one machine goes on on another from its last.npz in GridFS."""
    pytest.importorskip("torch")  # the runs here train with the torch backend
    server, name = mongo_db
    options = {"--mongo_db": server.spec(name)}
    common = dict(dataset="chars", data_path=small_text, batch_size=16, num_steps=10, dtype="float64", seed=3)
    first = run_experiment("main", ["tiny"], options=options, max_max_epoch=1, save_dir=str(tmp_path / "a"), **common)
    # elsewhere: a fresh folder, the database named in resume= (or implied by -m with resume=#ID)
    for resume, folder in ((f"{server.spec(name)}#{first._id}", "b"), (f"#{first._id}", "c")):
        resumed = run_experiment(
            "main", ["tiny"], options=options, max_max_epoch=2, save_dir=str(tmp_path / folder), resume=resume, **common
        )
        assert resumed.info["epoch_nr"] == 2 and (tmp_path / folder / "fetched" / "best.npz").is_file()
    straight = run_experiment("main", ["tiny"], max_max_epoch=2, save_dir=str(tmp_path / "d"), **common)
    assert resumed.info["logs"]["valid_perplexity"] == pytest.approx(
        straight.info["logs"]["valid_perplexity"], rel=1e-9
    )
    db = database(server, name)
    doc = db.runs.find_one({"_id": resumed._id})
    assert doc["status"] == "COMPLETED" and doc["config"]["resume"] == f"#{first._id}"
    assert db.metrics.find_one({"run_id": resumed._id, "name": "valid_perplexity"})["steps"] == [2]


def test_resume_errors_are_one_line(mongo_db, small_text, tmp_path):
    server, name = mongo_db
    base = tiny(small_text, tmp_path)
    for resume, message in (
        (f"{server.spec(name)}#7", "no run 7 in database"),
        ("#3", "there is no -m"),
        ("mongodb://u:pw@127.0.0.1:1/x#3", "must not hold a password"),
    ):
        result = run_cli("with", *base, f"resume={resume}")
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert message in result.stderr.strip().splitlines()[-1], result.stderr[-1000:]
        assert ":pw@" not in result.stdout + result.stderr
    assert database(server, name).runs.count_documents({}) == 0


def test_credentials_are_never_stored_or_printed(private_mongo, small_text, tmp_path):
    pytest.importorskip("torch")  # the runs here train with the torch backend
    admin = pymongo.MongoClient(private_mongo.url).admin
    admin.command("createUser", "rhnuser", pwd="s3cret-pw", roles=[{"role": "root", "db": "admin"}])
    private_mongo.stop()
    private_mongo.start(auth=True)
    name = unique_db()
    url = f"mongodb://rhnuser:s3cret-pw@127.0.0.1:{private_mongo.port}/{name}?authSource=admin"
    result = run_cli("-m", url, "-F", str(tmp_path / "obs"), "with", *tiny(small_text, tmp_path / "ckpt"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "s3cret-pw" not in result.stdout + result.stderr
    client = pymongo.MongoClient(url)
    run = client[name].runs.find_one({"_id": 1})
    assert run["status"] == "COMPLETED" and "s3cret-pw" not in json.dumps(run, default=str)
    assert run["meta"]["options"]["--mongo_db"] == url.replace("s3cret-pw", "***")
    for path in (tmp_path / "obs" / "1").iterdir():
        if path.suffix in (".json", ".txt"):
            assert "s3cret-pw" not in path.read_text(), path
    wrong = run_cli("-m", url.replace("s3cret-pw", "wrong-pw"), "with", *tiny(small_text, tmp_path / "w"))
    assert wrong.returncode != 0 and "wrong-pw" not in wrong.stdout + wrong.stderr
    assert "refused access" in wrong.stderr.strip().splitlines()[-1]


def test_bad_addresses_are_one_line_errors(small_text, tmp_path):
    for spec, message in (("a:b:c:d:e", "bad MongoDB address"), ("localhost:27017:rhn.runs:3", "not supported")):
        result = run_cli("-m", spec, "with", *tiny(small_text, tmp_path))
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert message in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "backend, command, where, args",
    [
        ("torch", "main", "resume", ["resume=mongodb://rhnuser:{pw}@127.0.0.1:27017/rhn#1"]),
        ("tf", "main", "data_path", ["data_path=https://rhnuser:{pw}@example.com/alice.txt"]),
        ("torch", "main", "save_dir", ["save_dir=mongodb://rhnuser:{pw}@127.0.0.1/x"]),
        ("torch", "evaluate", "load_model", ["{config_file}"]),  # a config file given as a named config
        ("torch", "main", "--comment", ["--comment", "see mongodb://rhnuser:{pw}@127.0.0.1/x"]),
    ],
)
def test_no_password_reaches_an_observer(mongo_db, small_text, tmp_path, backend, command, where, args):
    """Any value holding user:password@ is refused before the run exists: nothing reaches -m or -F."""
    server, name = mongo_db
    pw = "hunter2-secret"
    config_file = tmp_path / "named.json"
    config_file.write_text(json.dumps({"load_model": f"s3://rhnuser:{pw}@bucket/best.npz"}))
    args = [a.format(pw=pw, config_file=config_file) for a in args]
    options, updates = (args, []) if args[0].startswith("--") else ([], args)
    command_args = [] if command == "main" else [command]
    result = run_cli(
        *command_args,
        "-m",
        server.spec(name),
        "-F",
        str(tmp_path / "obs"),
        *options,
        "with",
        *tiny(small_text, tmp_path / "ckpt"),
        *updates,
        backend=backend,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"RHNError: {where}")
    assert "password" in result.stderr.strip().splitlines()[-1]
    assert pw not in result.stdout + result.stderr
    db = database(server, name)
    assert db.runs.count_documents({}) == 0
    for collection in db.list_collection_names():  # nothing at all, in any collection
        assert pw not in json.dumps(list(db[collection].find()), default=str), collection
    stored = [p for p in tmp_path.rglob("*") if p.is_file() and p != config_file]
    assert not any(pw.encode() in p.read_bytes() for p in stored), stored
    assert not (tmp_path / "obs").exists() and not (tmp_path / "ckpt").exists()
    assert not (tmp_path / "mongodb:").exists() and not (tmp_path / "runs").exists()  # save_dir= not used either
