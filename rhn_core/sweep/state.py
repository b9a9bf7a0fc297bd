"""What the run database says about a sweep: each run's pieces, its state, what to do with it.

Every run of a sweep stores ``meta.sweep = {name, key, values}`` when it starts, so
the sweep finds its runs again without guessing. A run stopped and resumed is
several Sacred runs (pieces) with the same key; the latest piece tells the state.

    COMPLETED                              skip
    RUNNING, heartbeat fresh               skip (it is running somewhere)
    RUNNING, no heartbeat yet, started
      less than stale_s ago                skip (it has just started: Sacred beats after 10 s)
    RUNNING, heartbeat (or, before the
      first one, the start) older than
      stale_s                              resume (its process died without a word)
    FAILED, INTERRUPTED, ...               resume from last.npz (on disk, else from the database)
    no piece                               start

The decision is taken when a run is about to start (``Book.decide``), by the launcher
that holds the run's claim (``claim``): the database then tells what the run's
earlier pieces left, and a fresh RUNNING piece one that another machine is running.
"""

import datetime
import os
from dataclasses import dataclass

from ..errors import RHNError

STALE_S = 120  # Sacred beats every 10 s; a run silent this long has lost its process

ACTIONS = ("start", "resume", "skip")


def pieces_by_key(runs):
    """{key: [pieces, oldest first]} of the runs of one sweep."""
    groups = {}
    for run in runs:
        key = (run.get("meta") or {}).get("sweep", {}).get("key")
        if key is not None:
            groups.setdefault(key, []).append(run)
    for pieces in groups.values():
        pieces.sort(key=lambda r: (str(type(r["id"])), r["id"]))
    return groups


def _as_utc(value):
    """A heartbeat as an aware UTC datetime (MongoDB gives naive UTC, run.json an ISO string)."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def heartbeat_age(run, now=None):
    """Seconds since the run's last sign of life: its heartbeat, else (none yet) its start; None if neither."""
    beat = _as_utc(run.get("heartbeat")) or _as_utc(run.get("start_time"))
    if beat is None:
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return (now - beat).total_seconds()


def state(pieces, stale_s=STALE_S, now=None):
    """(state shown to the user, action) of a run from its pieces."""
    if not pieces:
        return "not started", "start"
    status = pieces[-1].get("status") or "UNKNOWN"
    if status == "COMPLETED":
        return status, "skip"
    if status == "RUNNING":
        age = heartbeat_age(pieces[-1], now)
        if age is None or age <= stale_s:
            return status, "skip"
        return f"RUNNING (silent {age:.0f} s)", "resume"
    return status, "resume"


def resume_source(pieces, save_dir):
    """What ``resume=`` continues from: the run folder's last.npz, else the latest stored one, else ''."""
    if os.path.isfile(os.path.join(save_dir, "last.npz")):
        return os.path.join(save_dir, "last.npz")
    for piece in reversed(pieces):
        where = (piece.get("artifacts") or {}).get("last.npz")
        if where:
            return where
    return ""


@dataclass
class Book:
    """Where a sweep keeps its bookkeeping (MongoDB or a file observer folder); picklable, so a Slurm job
    reads it too when its run starts."""

    name: str
    mongo: str = None
    file_storage: str = None
    stale_s: float = STALE_S

    def source(self):
        from ..tracking.sources import DirSource, MongoSource

        if self.mongo:
            return MongoSource(self.mongo)
        if self.file_storage:
            os.makedirs(self.file_storage, exist_ok=True)
            return DirSource(self.file_storage)
        raise RHNError("a sweep keeps its bookkeeping in the run database: give -m ADDRESS (MongoDB) or -F DIR")

    def groups(self):
        """{key: pieces} of every run of the sweep, as the database has them now."""
        source = self.source()
        try:
            return pieces_by_key(source.runs(sweep=self.name))
        finally:
            source.close()

    def decide(self, key, save_dir, now=None):
        """(state shown, action, resume source) of run ``key`` now."""
        pieces = self.groups().get(key, [])
        shown, action = state(pieces, self.stale_s, now)
        return shown, action, resume_source(pieces, save_dir) if action != "skip" else ""
