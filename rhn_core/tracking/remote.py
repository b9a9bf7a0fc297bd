"""``resume=`` from a run stored in MongoDB: its checkpoints fetched from GridFS.

``resume=ADDRESS#ID`` (ADDRESS as for ``-m``, without a password) or
``resume=#ID`` (the database this run logs to with ``-m``) continue run ID
from its ``last.npz`` artifact, so a job stopped on one machine goes on on
another. The run's ``best.npz`` comes along: the final evaluation needs it.
"""

import functools
import os
import shutil

from ..atomic import temporary_path
from ..errors import RHNError
from .credentials import RESUME_ADVICE, has_password
from .mongo import connect, parse_resume, parse_target


def check_resume(value):
    """Refuse a password in ``resume=``: the config is stored with the run."""
    ref = parse_resume(value)
    if ref and has_password(ref[0]):
        raise RHNError(RESUME_ADVICE)  # also refused earlier, before the run is created


def is_reference(value):
    """Whether ``resume=`` names a run in MongoDB (ADDRESS#ID or #ID) rather than a file."""
    return parse_resume(value) is not None


def _target_of(db_spec, run):
    if db_spec:
        return parse_target(db_spec)
    from .observer import MongoRunObserver

    for observer in getattr(run, "observers", []):
        if isinstance(observer, MongoRunObserver):
            return observer.target
    raise RHNError(
        "resume=#ID names a run of the database this run logs to, but there is no -m: "
        "add -m host:port:db or write resume=host:port:db#ID"
    )


def resolve(value, run):
    """The run ``resume=`` names in a database, resolved before training starts (the database: the
    address in ``value``, or for ``#ID`` the one ``run`` logs to with -m; a password refused): the
    download of its checkpoints, a function of a folder that fetches them into it and returns the path
    of the last.npz. None when ``value`` is not a database reference (a plain path or empty)."""
    ref = parse_resume(value)
    if ref is None:
        return None
    check_resume(value)
    return functools.partial(fetch, _target_of(ref[0], run), ref[1])


def fetch(target, run_id, folder):
    """Download the checkpoints of run ``run_id`` of the database ``target`` into ``folder``; the path of its
    last.npz."""
    import gridfs

    client, database = connect(target)
    with client:
        runs = database[target.runs_collection]
        doc = runs.find_one({"_id": run_id}, {"artifacts": 1, "status": 1})
        if doc is None:
            raise RHNError(
                f"no run {run_id} in database {target.db_name} at {target.display}: "
                f"list the runs with python -m rhn_core.tracking.report --mongo {target.address}"
            )
        files = {a["name"]: a["file_id"] for a in doc.get("artifacts", [])}
        if "last.npz" not in files:
            raise RHNError(
                f"run {run_id} ({doc.get('status')}) stored no last.npz to resume from "
                f"(it has: {', '.join(files) or 'no artifacts'})"
            )
        os.makedirs(folder, exist_ok=True)
        fs = gridfs.GridFS(database)
        for name in ("last.npz", "best.npz"):
            if name in files:
                tmp = temporary_path(os.path.join(folder, name))
                try:
                    with open(tmp, "wb") as f:
                        shutil.copyfileobj(fs.get(files[name]), f, 1 << 20)
                    os.replace(tmp, os.path.join(folder, name))
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
    print(f"Fetched the checkpoints of run {run_id} ({doc.get('status')}) from {target.address} into {folder}")
    return os.path.join(folder, "last.npz")
