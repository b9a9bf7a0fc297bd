"""Who starts a run of a sweep: an exclusive ``flock`` on ``sweep.claim`` in the run's folder.

Two launches of one sweep (a second ``rhn-sweep run`` while the first still has runs
queued, a Slurm job requeued while a local launch is running) may both reach a run.
Each takes the run's claim just before starting it; the one that gets it starts (or
resumes) the run and holds the claim for the run's life, the other skips the run and
says who has it. The run's process inherits the claim's file descriptor, so it stays
held while the run trains even if its launcher dies; the operating system releases it
when the last of them ends (a killed process never leaves a stale claim). The file
holds a line about its holder (process, host, Slurm job, since when) for that message.
"""

import datetime
import fcntl
import json
import os
import socket
import time

CLAIM_FILE = "sweep.claim"


def holder_info():
    """What the claim says about its holder: this process, its host and Slurm job, the time."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if job and "SLURM_ARRAY_TASK_ID" in os.environ
        else os.environ.get("SLURM_JOB_ID")
    )
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job": job,
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def describe(info):
    """``launcher pid 123 on host (Slurm job 7_1) since 2026-...``; '' for an unreadable claim."""
    if not isinstance(info, dict) or "pid" not in info:
        return ""
    job = f" (Slurm job {info['slurm_job']})" if info.get("slurm_job") else ""
    return f"launcher pid {info['pid']} on {info.get('host', '?')}{job} since {info.get('since', '?')}"


class Claim:
    """The claim of the run whose folder is ``folder``."""

    def __init__(self, folder):
        self.path = os.path.join(folder, CLAIM_FILE)
        self.fd = None

    def acquire(self, write=True):
        """Take the claim if no one holds it; True if this process now holds it (never waits)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        if write:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        self.fd = fd
        return True

    def holder(self):
        """Who holds the claim, in words (read from the file; its holder may just be writing it)."""
        try:
            with open(self.path) as f:
                text = describe(json.loads(f.read() or "null"))
        except (OSError, ValueError):
            text = ""
        return text or "a launcher"

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops this process's share of the lock; a child may still hold it
            self.fd = None

    def take(self, tries=3, pause_s=0.3):
        """``acquire``, tried again briefly: another launch's ``held_elsewhere`` holds it for an instant."""
        for i in range(tries):
            if self.acquire():
                return True
            if i + 1 < tries:
                time.sleep(pause_s)
        return False

    def held_elsewhere(self):
        """Whether another process holds the claim now (taken and given back at once when free)."""
        if self.acquire(write=False):
            self.release()
            return False
        return True
