"""One writer per run folder: an exclusive lock held for a process's whole life, and the run's folder.

A process that writes into a folder (a training run into its ``save_dir``, MC evaluation
into its output folder) first takes an exclusive ``flock`` on ``<folder>/.lock`` and keeps it
until it exits. The kernel releases it when the process ends in any way (kill -9 too), so
there is nothing to clean up; a second process on the same folder is refused at once, with a
line naming the holder (host, pid, start time and command are written into the lock file).
In a data-parallel job rank 0 holds it (it is the one writer).

``flock`` is advisory and local to what the file system supports: on a local disk it is
exact; on NFS (Linux clients since 2.6.12) flock is emulated with NFS byte-range locks and
works between machines when the server has a lock manager; on Lustre it works between
machines only when the clients mount with ``-o flock`` (with ``localflock`` it is per client,
with ``noflock`` it fails: the run then stops with a line saying so).

The default folder (``save_dir=''``) is a fresh one per run: ``runs/<dataset>_<seed>``, else
``_2``, ``_3``... The first free one is claimed by locking it, so two runs started together
never pick the same one.
"""

import datetime
import errno
import fcntl
import os
import shlex
import socket

from .errors import RHNError

LOCK_NAME = ".lock"
CHECKPOINTS = ("last.npz", "best.npz")  # the files a run writes that another run must never replace


def shell_arg(key, value):
    """``key=value`` as one shell word (a path with a space pasted back stays one argument)."""
    return shlex.quote(f"{key}={value}")


def describe_holder(text):
    """The holder's line from the lock file's text; the text may still be empty (it is being written)."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    if not fields.get("pid"):
        return "another process that is starting now"
    command = fields.get("command", "a run")
    return (
        f"{command} (pid {fields['pid']} on {fields.get('host', '?')}, started "
        f"{fields.get('started', '?').replace('T', ' ')})"
    )


class RunLock:
    """The exclusive lock on ``folder`` (created if needed); ``release()`` or process exit frees it."""

    def __init__(self, folder, command="training", key="save_dir"):
        self.folder, self.command, self.key = folder, command, key
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd = None

    def acquire(self):
        """Take the lock or raise RHNError naming the holder (never waits)."""
        holder = self.try_acquire()
        if holder is not None:
            raise RHNError(
                f"{self.folder} is in use by {describe_holder(holder)}: one process writes a run "
                f"folder at a time; wait for it to end or set {self.key}= to another folder"
            )
        return self

    def try_acquire(self):
        """Take the lock and return None, or return the holder's text when another process has it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise RHNError(
                    f"cannot write in {self.folder} ({e.strerror or e}): set {self.key}= to a writable folder"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return holder
                raise RHNError(
                    f"cannot lock {self.path} ({e.strerror or e}; the file system does not "
                    f"support flock, e.g. Lustre mounted without -o flock): set {self.key}= to a "
                    f"folder on a local disk or one that supports locks"
                )
            # The file may have been removed by the holder that just released it: lock the one in place.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        text = f"host={socket.gethostname()} pid={os.getpid()} started={stamp} command={self.command}\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
        except OSError:
            pass  # the lock holds without its description
        return None

    def release(self):
        """Remove the lock file and free the lock (a process waiting on the old file sees it is gone)."""
        if self.fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __del__(self):  # a holder dropped without release (an in-process test): its descriptor is closed
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read(fd):
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""


def holder_of(folder):
    """The line describing the process that holds ``folder``, or None when it is free (readers use this)."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return describe_holder(_read(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def note_writer(checkpoint, what):
    """Readers (evaluate, sample) take no lock: a checkpoint is replaced whole, never half-written, so they
    read one complete file. When a run is writing its folder they say so: the file may change after."""
    holder = holder_of(os.path.dirname(os.path.abspath(checkpoint)))
    if holder:
        print(f"Note: {checkpoint} belongs to {holder}, which is still writing; {what} the file as it is now")


def checkpoints_in(folder):
    """The run checkpoints in ``folder`` (other files, e.g. a sweep's, do not count)."""
    return [name for name in CHECKPOINTS if os.path.isfile(os.path.join(folder, name))]


def only_lock_left(folder):
    """Whether ``folder`` holds nothing but its lock file (and temporaries): a start that wrote nothing."""
    try:
        return all(name == LOCK_NAME or name.endswith(".tmp") for name in os.listdir(folder))
    except OSError:
        return False


def missing_folders(folder):
    """``folder`` and those of its parents that do not exist yet, deepest first (what makedirs creates)."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def claim_default(base, command="training"):
    """(folder, held lock, folders created) of the first of ``base``, ``base_2``, ``base_3``... that is
    free and holds no checkpoints; created if needed (the folders created: ``missing_folders``)."""
    for n in range(1, 100000):
        folder = base if n == 1 else f"{base}_{n}"
        missing = missing_folders(folder)
        if not missing and not only_lock_left(folder):
            continue  # a finished, running or interrupted run, or someone's files: never reused
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise RHNError(f"cannot create {folder} ({e.strerror or e}): set save_dir= to a writable folder")
        lock = RunLock(folder, command)
        if lock.try_acquire() is not None:
            continue  # claimed by a run started at the same moment
        if only_lock_left(folder):
            return folder, lock, missing
        lock.release()  # it wrote its first file between our look and our lock: not ours
    raise RHNError(f"{base}_2 ... {base}_99999 are all taken: set save_dir= to a folder of your choice")


def default_base(cfg):
    """Where a new run's folder goes when save_dir is not set: runs/<dataset>_<seed> (then _2, _3...)."""
    return os.path.join("runs", f"{cfg['dataset']}_{cfg['seed']}")


class RunFolder:
    """The folder one process writes, locked from its start to its end.

    A start refused before anything was written (bad data, a foreign checkpoint...) leaves no trace:
    a folder it created is removed again, one that existed is left as it was."""

    def __init__(self, path, lock, created):
        # created: the folders this claim made, deepest first (the folder, then parents such as runs/)
        self.path, self.lock, self.created = path, lock, created

    @classmethod
    def claim(cls, folder, base="", command="training", key="save_dir"):
        """Lock ``folder``; when it is '', the first free one of ``base``, ``base_2``..."""
        if not folder:
            path, lock, created = claim_default(base, command)
            return cls(path, lock, created)
        created = missing_folders(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise RHNError(
                f"cannot write checkpoints to {folder} ({e.strerror or e}"
                f"{': ' + e.filename if e.filename and e.filename != folder else ''}): "
                f"set {key}= to a writable folder"
            )
        try:
            return cls(folder, RunLock(folder, command, key).acquire(), created)
        except RHNError:
            _remove_empty(created)
            raise

    def release(self):
        self.lock.release()

    def abandon(self):
        """The start was refused: free the folder, and remove it (with the parents this claim created, such as
        ``runs/``) when this process created it and wrote nothing."""
        empty = bool(self.created) and only_lock_left(self.path)
        self.release()
        if empty:
            _remove_empty(self.created)


def _remove_empty(folders):
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty after all (someone else's file): it and its parents are left alone
