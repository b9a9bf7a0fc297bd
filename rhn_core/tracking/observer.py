"""Sacred observers that never lose a run: MongoDB written in the background, files as backstop.

``MongoRunObserver`` stores a run exactly in Sacred's ``MongoObserver`` layout
(``runs`` documents, ``metrics`` documents, artifacts and sources in GridFS),
so Omniboard, sacredboard and incense read it as they read any Sacred run. It
differs in how it writes:

* Events only update the run's state in memory (the caller never waits on the
  network); a writer thread brings MongoDB up to that state. Every write is
  idempotent (the whole run document, whole metric series under ids chosen
  here, an artifact replaced under its name), so a write cut off half-way is
  simply done again.
* Server unreachable at the start: a one-line error after ``TIMEOUT_S``; with
  ``--mongo_fallback=DIR`` the run goes on with Sacred's file observer in DIR.
* Server lost mid-run: training goes on. The writer retries at every
  heartbeat and meanwhile keeps the complete run in ``<spool>/mongo_<id>`` in
  the file observer's layout. When the server is back the run is written in
  full and the folder removed; if it is still away when the run ends, the
  folder stays and ``python -m rhn_core.tracking.upload`` writes it in later.
* An artifact added again under the same name (``last.npz`` every epoch)
  replaces the stored one instead of piling up copies.
"""

import copy
import hashlib
import mimetypes
import os
import sys
import threading

from bson import ObjectId
from sacred.observers import FileStorageObserver
from sacred.observers.base import RunObserver
from sacred.serializer import flatten

from .mongo import TIMEOUT_S, connect, redact
from .rundir import write_run_dir

FORMAT = "MongoObserver-0.7.0"  # Sacred's document format version, read by Omniboard
DEFAULT_SPOOL = os.path.join("runs", "mongo_unsent")
FINAL_WAIT_S = 120  # longest wait for the last write at the end of a run before keeping it on disk


def _warn(message):
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def md5_of(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunStore:
    """Idempotent writes of one Sacred run into a database (observer and upload share them)."""

    def __init__(self, target, database):
        import gridfs

        self.runs, self.metrics = database[target.runs_collection], database["metrics"]
        self.fs = gridfs.GridFS(database)

    def insert(self, entry):
        """Insert ``entry`` under the next free integer id (Sacred's numbering; safe with concurrent runs)."""
        from pymongo.errors import DuplicateKeyError

        while True:
            last = self.runs.find_one({}, {"_id": 1}, sort=[("_id", -1)])
            entry["_id"] = last["_id"] + 1 if last else 1
            try:
                self.runs.insert_one(entry)
                return entry["_id"]
            except DuplicateKeyError:  # another run took this id first
                continue

    def save_sources(self, sources):
        """[[name, GridFS id]] for [(name, path)], reusing a stored file of the same content."""
        stored = []
        for name, path in sources:
            md5 = md5_of(path)
            found = self.fs.find_one({"filename": os.path.abspath(path), "metadata.md5": md5})
            if found is None:
                with open(path, "rb") as f:
                    stored.append([name, self.fs.put(f, filename=os.path.abspath(path), metadata={"md5": md5})])
            else:
                stored.append([name, found._id])
        return stored

    def put_artifact(self, run_id, name, path, content_type=None, metadata=None):
        with open(path, "rb") as f:
            return self.fs.put(
                f, filename=f"artifact://{self.runs.name}/{run_id}/{name}", content_type=content_type, metadata=metadata
            )

    def write_metric(self, run_id, metric_id, name, series):
        self.metrics.replace_one(
            {"_id": metric_id},
            {
                "_id": metric_id,
                "run_id": run_id,
                "name": name,
                "steps": list(series["steps"]),
                "values": [float(v) if isinstance(v, (int, float)) else v for v in series["values"]],
                "timestamps": list(series["timestamps"]),
            },
            upsert=True,
        )

    def write_entry(self, run_id, entry):
        # $set rather than replace: fields other tools add to a run (Omniboard's tags, notes) survive.
        self.runs.update_one({"_id": run_id}, {"$set": {k: v for k, v in entry.items() if k != "_id"}}, upsert=True)

    def delete_files(self, file_ids):
        for file_id in file_ids:
            self.fs.delete(file_id)


class FileObserver(FileStorageObserver):
    """Sacred's file observer, except that an artifact added again replaces the earlier one."""

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self.save_file(filename, name)
        if name not in self.run_entry["artifacts"]:
            self.run_entry["artifacts"].append(name)
        self.save_json(self.run_entry, "run.json")


class _Artifact:
    def __init__(self, path, content_type, metadata):
        self.path, self.content_type, self.metadata = path, content_type, metadata
        self.version, self.stored_version, self.file_id = 1, 0, None


class MongoRunObserver(RunObserver):
    """Sacred's MongoDB layout, written from a background thread; see the module docstring."""

    def __init__(self, target, fallback_dir=None, spool_dir=None, timeout_s=TIMEOUT_S):
        self.target, self.priority = target, target.priority
        self.fallback_dir, self.timeout_s = fallback_dir, timeout_s
        self.spool_root = spool_dir or fallback_dir or DEFAULT_SPOOL
        self.fallback = None  # the file observer standing in when the server was away at the start
        self.run_id, self.entry, self.store = None, None, None
        self.series = {}  # metric name -> {"id", "steps", "values", "timestamps", "stored"}
        self.artifacts = {}  # name -> _Artifact
        self._lock, self._wake, self._done = threading.Lock(), threading.Event(), threading.Event()
        self._finished, self._online, self._spooled, self._writer = False, True, None, None
        self._replaced = []  # GridFS files of superseded artifacts, deleted once the run document moved on
        self._spooled_versions = {}  # artifact name -> version last linked into the spool folder

    # --- Sacred's events (caller's thread: memory only, except the start) --------
    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        from ..errors import RHNError

        try:
            return self._start(ex_info, command, host_info, start_time, config, meta_info, _id)
        except RHNError as e:
            if not self.fallback_dir:
                raise
            _warn(
                f"{e}. --mongo_fallback: this run is kept in {self.fallback_dir} instead; store it later "
                f"with python -m rhn_core.tracking.upload {os.path.join(self.fallback_dir, '<run id>')} "
                f"-m {self.target.address}"
            )
            self.fallback = FileObserver(self.fallback_dir)
            return self.fallback.started_event(ex_info, command, host_info, start_time, config, meta_info, _id)

    def _start(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        from pymongo.errors import PyMongoError
        from ..errors import RHNError

        self.client, database = connect(self.target, self.timeout_s, fallback_advice=not self.fallback_dir)
        try:
            return self._insert(ex_info, command, host_info, start_time, config, meta_info, _id, database)
        except PyMongoError as e:  # the server went away between the ping and the first write
            self.client.close()
            self.entry = None
            raise RHNError(f"MongoDB at {self.target.display} failed at the start of the run: {redact(e)}")

    def _insert(self, ex_info, command, host_info, start_time, config, meta_info, _id, database):
        self.store = RunStore(self.target, database)
        experiment = dict(ex_info)
        experiment["sources"] = self.store.save_sources(
            [(name, os.path.join(ex_info["base_dir"], name)) for name, _ in ex_info["sources"]]
        )
        self.entry = {
            "experiment": experiment,
            "format": FORMAT,
            "command": command,
            "host": dict(host_info),
            "start_time": start_time,
            "config": flatten(config),
            "meta": meta_info,
            "status": "RUNNING",
            "resources": [],
            "artifacts": [],
            "captured_out": "",
            "info": {},
            "heartbeat": None,
        }
        if _id is not None:
            self.entry["_id"] = _id
            self.store.write_entry(_id, self.entry)
            self.run_id = _id
        else:
            self.run_id = self.store.insert(self.entry)
        self._writer = threading.Thread(target=self._write_loop, name="rhn-mongo-writer", daemon=True)
        self._writer.start()
        return self.run_id

    def _update(self, **fields):
        with self._lock:
            self.entry.update(fields)
        self._wake.set()

    def heartbeat_event(self, info, captured_out, beat_time, result):
        if self.fallback:
            return self.fallback.heartbeat_event(info, captured_out, beat_time, result)
        self._update(info=flatten(info), captured_out=captured_out, heartbeat=beat_time, result=flatten(result))

    def log_metrics(self, metrics_by_name, info):
        if self.fallback:
            return self.fallback.log_metrics(metrics_by_name, info)
        with self._lock:
            for name, new in metrics_by_name.items():
                series = self.series.get(name)
                if series is None:
                    series = self.series[name] = {
                        "id": ObjectId(),
                        "steps": [],
                        "values": [],
                        "timestamps": [],
                        "stored": 0,
                    }
                    # Sacred's MongoObserver lists the metric documents in the run's info too.
                    info.setdefault("metrics", []).append({"name": name, "id": str(series["id"])})
                for key in ("steps", "values", "timestamps"):
                    series[key].extend(new[key])
        self._wake.set()

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        if self.fallback:
            return self.fallback.artifact_event(name, filename, metadata, content_type)
        with self._lock:
            artifact = self.artifacts.get(name)
            content_type = content_type or mimetypes.guess_type(filename)[0]
            if artifact is None:
                self.artifacts[name] = _Artifact(os.path.abspath(filename), content_type, metadata)
            else:  # the same name again: the newer file replaces the stored one
                artifact.path, artifact.content_type, artifact.metadata = (
                    os.path.abspath(filename),
                    content_type,
                    metadata,
                )
                artifact.version += 1
        self._wake.set()

    def resource_event(self, filename):
        if self.fallback:
            return self.fallback.resource_event(filename)
        resource = [filename, md5_of(filename)]
        with self._lock:
            if resource not in self.entry["resources"]:
                self.entry["resources"].append(resource)
        self._wake.set()

    def completed_event(self, stop_time, result):
        self._end(
            self.fallback and self.fallback.completed_event,
            (stop_time, result),
            stop_time=stop_time,
            result=flatten(result),
            status="COMPLETED",
        )

    def interrupted_event(self, interrupt_time, status):
        self._end(
            self.fallback and self.fallback.interrupted_event,
            (interrupt_time, status),
            stop_time=interrupt_time,
            status=status,
        )

    def failed_event(self, fail_time, fail_trace):
        self._end(
            self.fallback and self.fallback.failed_event,
            (fail_time, fail_trace),
            stop_time=fail_time,
            status="FAILED",
            fail_trace=fail_trace,
        )

    def _end(self, fallback_event, args, **fields):
        if fallback_event:
            return fallback_event(*args)
        if self.entry is None:  # the start itself failed: nothing was stored, nothing to finish
            return
        self._update(**fields)
        self._finished = True
        self._wake.set()
        # One last write; if the server is away it costs one timeout and the run stays on disk.
        if not self._done.wait(FINAL_WAIT_S):
            self._spool()
            _warn(
                f"MongoDB at {self.target.display} did not take the end of run {self.run_id} within "
                f"{FINAL_WAIT_S} s: the whole run is kept in {self._spooled}; store it later with "
                f"python -m rhn_core.tracking.upload {self._spooled} -m {self.target.address}"
            )

    def join(self):
        if self._writer is not None:
            self._done.wait(FINAL_WAIT_S)

    def __eq__(self, other):
        return isinstance(other, MongoRunObserver) and other is self

    __hash__ = object.__hash__

    # --- the writer thread -------------------------------------------------------
    def _write_loop(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            finished = self._finished
            if self._write():
                if self._spooled:
                    self._drop_spool()
            else:
                self._spool()
            if finished:
                if not self._online:
                    _warn(
                        f"MongoDB at {self.target.display} is still away at the end of run {self.run_id}: the "
                        f"whole run is kept in {self._spooled}; when the server is back, store it with "
                        f"python -m rhn_core.tracking.upload {self._spooled} -m {self.target.address}"
                    )
                self.client.close()
                self._done.set()
                return

    def _snapshot(self):
        with self._lock:
            entry = copy.deepcopy(self.entry)
            series = {
                n: {k: list(s[k]) for k in ("steps", "values", "timestamps")} | {"id": s["id"]}
                for n, s in self.series.items()
                if len(s["steps"]) != s["stored"]
            }
            artifacts = {n: (a, a.version) for n, a in self.artifacts.items() if a.version != a.stored_version}
        return entry, series, artifacts

    def _write(self):
        """Bring the database up to the current state; False if the server cannot be reached."""
        from pymongo.errors import PyMongoError

        entry, series, artifacts = self._snapshot()
        try:
            for name, (artifact, version) in artifacts.items():
                try:
                    file_id = self.store.put_artifact(
                        self.run_id, name, artifact.path, artifact.content_type, artifact.metadata
                    )
                except OSError as e:  # the file went away: nothing to keep, and no reason to retry
                    _warn(f"artifact {name} not stored: {e}")
                    file_id = artifact.file_id
                if artifact.file_id is not None and artifact.file_id != file_id:
                    self._replaced.append(artifact.file_id)
                artifact.file_id, artifact.stored_version = file_id, version
            entry["artifacts"] = [
                {"name": n, "file_id": a.file_id} for n, a in self.artifacts.items() if a.file_id is not None
            ]
            for name, s in series.items():
                self.store.write_metric(self.run_id, s["id"], name, s)
                self.series[name]["stored"] = len(s["steps"])
            self.store.write_entry(self.run_id, entry)
            self.store.delete_files(self._replaced)
            self._replaced = []
        except PyMongoError as e:
            if self._online:
                _warn(
                    f"MongoDB at {self.target.display} cannot be written ({type(e).__name__}); training "
                    f"goes on, writes are retried at every heartbeat and the run is kept meanwhile in "
                    f"{os.path.join(self.spool_root, f'mongo_{self.run_id}')}"
                )
            self._online = False
            return False
        if not self._online:
            _warn(f"MongoDB at {self.target.display} is back: run {self.run_id} is stored in full")
        self._online = True
        return True

    def _spool(self):
        """The whole run as a file-observer folder (replaced atomically file by file)."""
        folder = os.path.join(self.spool_root, f"mongo_{self.run_id}")
        with self._lock:
            entry = copy.deepcopy(self.entry)
            metrics = {n: {k: list(s[k]) for k in ("steps", "values", "timestamps")} for n, s in self.series.items()}
            artifacts = {n: a.path for n, a in self.artifacts.items()}
            versions = {n: a.version for n, a in self.artifacts.items()}
        if folder != self._spooled:
            self._spooled_versions = {}
        entry["experiment"]["sources"] = [[n, str(i)] for n, i in entry["experiment"]["sources"]]
        try:
            write_run_dir(
                folder,
                entry,
                metrics,
                artifacts,
                extra={
                    "run_id": self.run_id,
                    "database": self.target.db_name,
                    "address": self.target.display,
                    "sources": entry["experiment"]["sources"],
                },
                copy=[n for n in artifacts if self._spooled_versions.get(n) != versions[n]],
            )
            self._spooled, self._spooled_versions = folder, versions
        except OSError as e:
            _warn(f"cannot keep run {self.run_id} in {folder} either: {e}")

    def _drop_spool(self):
        import shutil

        shutil.rmtree(self._spooled, ignore_errors=True)
        self._spooled = None
