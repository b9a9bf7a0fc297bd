"""A run as a folder in Sacred's FileStorageObserver layout, written and read back.

``run.json``, ``config.json``, ``info.json``, ``metrics.json``, ``cout.txt`` and
the artifacts as files beside them: what ``-F DIR`` writes. The MongoDB
observer writes a run here when the server is away (``mongo.json`` then records
the run id it has in the database), and ``python -m rhn_core.tracking.upload`` reads any
such folder back into MongoDB. Every file is replaced atomically, so a folder
on disk is always readable, whenever the process stops.
"""

import datetime
import json
import os
import shutil

from ..errors import RHNError

TIME_KEYS = ("start_time", "stop_time", "heartbeat")
_SPLIT_OUT = ("config", "info", "captured_out")  # kept in files of their own


def _atomic_write(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)  # ObjectIds and anything else JSON has no type for


def write_json(folder, name, obj):
    _atomic_write(os.path.join(folder, name), json.dumps(obj, sort_keys=True, indent=2, default=_jsonable))


def link_or_copy(src, dst):
    """``dst`` becomes a copy of ``src``; a hard link where possible (checkpoints are large)."""
    tmp = f"{dst}.{os.getpid()}.tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_run_dir(folder, entry, metrics, artifacts, extra=None, copy=None):
    """Write one run: ``entry`` (Sacred's run document), ``metrics`` {name: series}, ``artifacts`` {name: path}.

    ``copy`` names the artifacts whose files changed since the folder was last written (default: all).
    """
    os.makedirs(folder, exist_ok=True)
    run = {k: v for k, v in entry.items() if k not in _SPLIT_OUT and k != "_id"}
    run["artifacts"] = sorted(artifacts)
    for name in artifacts if copy is None else copy:
        path = artifacts[name]
        target = os.path.join(folder, name)
        if os.path.abspath(path) != os.path.abspath(target) and os.path.isfile(path):
            link_or_copy(path, target)
    write_json(folder, "config.json", entry.get("config", {}))
    write_json(folder, "info.json", entry.get("info", {}))
    write_json(folder, "metrics.json", metrics)
    _atomic_write(os.path.join(folder, "cout.txt"), entry.get("captured_out", ""))
    if extra is not None:
        write_json(folder, "mongo.json", extra)
    write_json(folder, "run.json", run)  # last: a folder with run.json is complete


def _load(folder, name, default=None):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        if default is not None:
            return default
        raise RHNError(
            f"{folder} is not a run folder of Sacred's file observer (no {name}): "
            f"give a folder such as runs/3 written by -F runs"
        )
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise RHNError(f"cannot read {path}: {e}")


def _parse_time(value):
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value


def read_run_dir(folder):
    """(entry, metrics, artifacts, extra) of a run folder, times as datetimes again."""
    run = _load(folder, "run.json")
    entry = {**run, "config": _load(folder, "config.json", {}), "info": _load(folder, "info.json", {})}
    cout = os.path.join(folder, "cout.txt")
    entry["captured_out"] = open(cout, errors="replace").read() if os.path.isfile(cout) else ""
    for key in TIME_KEYS:
        if key in entry:
            entry[key] = _parse_time(entry[key])
    metrics = _load(folder, "metrics.json", {})
    for series in metrics.values():
        series["timestamps"] = [_parse_time(t) for t in series.get("timestamps", [])]
    artifacts = {name: os.path.join(folder, name) for name in dict.fromkeys(run.get("artifacts", []))}
    missing = [n for n, p in artifacts.items() if not os.path.isfile(p)]
    if missing:
        raise RHNError(
            f"{folder}: artifact file(s) {', '.join(missing)} are missing; restore them or "
            f"remove them from run.json's artifacts list"
        )
    return entry, metrics, artifacts, _load(folder, "mongo.json", {})
