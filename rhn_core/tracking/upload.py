"""Store runs kept on disk into MongoDB: ``python -m rhn_core.tracking.upload DIR... -m ADDRESS``.

DIR is a run folder in Sacred's file-observer layout: one written by ``-F``,
by ``--mongo_fallback`` while the server was unreachable, or kept by the
MongoDB observer when the server was lost (``runs/mongo_unsent/mongo_<id>``).
A folder kept by the observer completes the run it already has in the
database (same id); any other folder becomes a new run, and its id is written
to the folder's ``mongo.json`` so that uploading it again updates that run
instead of adding a copy. ``-m`` may be left out for a kept folder whose
address needed no password.
"""

import argparse
import os
import sys

from ..errors import RHNError
from .mongo import connect, parse_target, redact
from .rundir import read_run_dir, write_json
from .observer import FORMAT, RunStore


def _sources(entry, folder, extra):
    """[(name, path)] of the run's source files, or None where the database already has them."""
    if "sources" in extra:
        return None
    base = os.path.dirname(os.path.abspath(folder))  # file observer: paths relative to its base dir
    pairs = []
    for name, path in entry.get("experiment", {}).get("sources", []):
        full = path if os.path.isabs(path) else os.path.join(base, path)
        if os.path.isfile(full):
            pairs.append((name, full))
    return pairs


def upload(folder, target, database):
    """Write one run folder into ``database``; returns its run id."""
    from bson import ObjectId

    entry, metrics, artifacts, extra = read_run_dir(folder)
    store = RunStore(target, database)
    same_db = extra.get("database") == target.db_name and "run_id" in extra
    sources = _sources(entry, folder, extra if same_db else {})
    experiment = dict(entry.get("experiment", {}))
    experiment["sources"] = (
        store.save_sources(sources) if sources is not None else [[n, ObjectId(i)] for n, i in extra["sources"]]
    )
    entry.update(experiment=experiment, format=FORMAT)
    entry.pop("_id", None)
    run_id = extra["run_id"] if same_db else store.insert({**entry, "status": "UPLOADING", "artifacts": []})
    earlier = [f._id for f in store.fs.find({"filename": {"$regex": f"^artifact://{store.runs.name}/{run_id}/"}})]
    entry["artifacts"] = []
    for name, path in artifacts.items():
        file_id = store.put_artifact(run_id, name, path)
        entry["artifacts"].append({"name": name, "file_id": file_id})
    old_metrics = {d["name"]: d["_id"] for d in store.metrics.find({"run_id": run_id}, {"name": 1})}
    entry["info"]["metrics"] = []
    for name, series in metrics.items():
        metric_id = old_metrics.get(name, ObjectId())
        store.write_metric(run_id, metric_id, name, series)
        entry["info"]["metrics"].append({"name": name, "id": str(metric_id)})
    store.write_entry(run_id, entry)
    store.delete_files(earlier)  # earlier copies of this run's artifacts
    write_json(
        folder,
        "mongo.json",
        {
            "run_id": run_id,
            "database": target.db_name,
            "address": target.address,
            "sources": [[n, str(i)] for n, i in experiment["sources"]],
        },
    )
    return run_id


def main(argv=None):
    from pymongo.errors import PyMongoError

    parser = argparse.ArgumentParser(prog="python -m rhn_core.tracking.upload", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", metavar="DIR", help="run folders (Sacred file-observer layout)")
    parser.add_argument(
        "-m",
        "--mongo_db",
        metavar="ADDRESS",
        help="host:port:db or a mongodb:// URL (default: the address a kept folder records)",
    )
    args = parser.parse_args(argv)
    try:
        for folder in args.folders:
            spec = args.mongo_db
            if spec is None:
                spec = read_run_dir(folder)[3].get("address")
                if not spec or "***" in spec:
                    raise RHNError(f"{folder}: give the database with -m host:port:db or -m mongodb://...")
            target = parse_target(spec)
            client, database = connect(target)
            with client:
                run_id = upload(folder, target, database)
            print(f"{folder} -> run {run_id} in {target.address}")
    except RHNError as e:
        print(f"error: {redact(e)}", file=sys.stderr)
        return 2
    except PyMongoError as e:
        print(
            f"error: MongoDB failed during the upload ({redact(e)}); run the same command again: "
            f"it completes the same run",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
