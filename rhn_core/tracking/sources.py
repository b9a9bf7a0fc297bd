"""Where logged runs are read from: a FileStorageObserver folder or a MongoObserver database.

Both give the same run records (status, config, info, meta, heartbeat, start time, artifacts) and
metric series, for the report and for the sweep's bookkeeping (which must not import the report).
"""

import json
import os

from ..errors import RHNError
from .table import lookup


class DirSource:
    """A FileStorageObserver folder: ``<id>/run.json``, ``config.json``, ``info.json``, ``metrics.json``."""

    def __init__(self, path):
        if not os.path.isdir(path):
            raise RHNError(f"{path}: no such folder: pass the folder given to the file observer (-F)")
        self.path, self.label = path, os.path.abspath(path)

    def _json(self, run_id, name):
        try:
            with open(os.path.join(self.path, run_id, name)) as f:
                return json.load(f)
        except (OSError, ValueError):  # a run still starting, or killed mid-write, lacks some files
            return {}

    def runs(self, sweep=None):
        try:
            names = os.listdir(self.path)
        except OSError as e:
            raise RHNError(f"cannot read {self.path} ({e.strerror}): check its permissions")
        ids = [n for n in names if os.path.isfile(os.path.join(self.path, n, "run.json"))]
        runs = []
        for i in ids:
            run = self._json(i, "run.json")
            runs.append(
                {
                    "id": int(i) if i.isdigit() else i,
                    "status": run.get("status"),
                    "config": self._json(i, "config.json"),
                    "info": self._json(i, "info.json"),
                    "meta": run.get("meta") or {},
                    "heartbeat": run.get("heartbeat"),
                    "start_time": run.get("start_time"),
                    "artifacts": {name: os.path.join(self.path, i, name) for name in run.get("artifacts", [])},
                }
            )
        return [r for r in runs if sweep is None or lookup(r["meta"], "sweep.name") == sweep]

    def metric(self, name, ids):
        return {i: self._json(str(i), "metrics.json").get(name, {}).get("values", []) for i in ids}

    def close(self):
        pass


class MongoSource:
    """A MongoObserver database: ``runs`` (or the address's collection) and ``metrics``."""

    def __init__(self, spec):
        from .mongo import connect, parse_target

        target = parse_target(spec)
        self.label = f"{target.display} (database {target.db_name}, collection {target.runs_collection})"
        self.client, self.db = connect(target)
        self.collection, self.address = target.runs_collection, target.address

    def _read(self, collection, query, fields):
        from pymongo.errors import PyMongoError

        try:  # the projection keeps captured output and artifact lists on the server
            return list(self.db[collection].find(query, dict.fromkeys(fields, 1)))
        except PyMongoError as e:  # the server went away after the connection check
            raise RHNError(f"reading {collection} from {self.label} failed ({e}): check the server and retry")

    def runs(self, sweep=None):
        query = {} if sweep is None else {"meta.sweep.name": sweep}
        fields = ("status", "config", "info", "meta", "heartbeat", "start_time", "artifacts.name")
        return [
            {
                "id": d["_id"],
                "status": d.get("status"),
                "config": d.get("config") or {},
                "info": d.get("info") or {},
                "meta": d.get("meta") or {},
                "heartbeat": d.get("heartbeat"),
                "start_time": d.get("start_time"),
                "artifacts": {a["name"]: f"{self.address}#{d['_id']}" for a in d.get("artifacts") or []},
            }
            for d in self._read(self.collection, query, fields)
        ]

    def metric(self, name, ids):
        docs = self._read("metrics", {"run_id": {"$in": list(ids)}, "name": name}, ("run_id", "values"))
        return {d["run_id"]: d.get("values") or [] for d in docs}

    def close(self):
        self.client.close()
