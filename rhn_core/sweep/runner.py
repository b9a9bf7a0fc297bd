"""One run of a sweep as a child process: its command line, its threads, its checkpoint on a signal.

``SweepJob`` is the callable both executors run: the local executor calls it in a
thread, Slurm runs it through submitit. It starts the entry point (``python
rhn_train_torch.py with ...``) as a child with its own thread count and appends the
child's output to the run's log. Whether the run starts, resumes or is skipped is decided
when it is about to start, under its claim (``claim``), from what the database then says
(``state.Book``); a run that finds ``last.npz`` in its folder resumes from it, so a
requeued job continues where the previous piece stopped.

Preemption: submitit calls ``checkpoint`` when Slurm sends the pre-timeout signal
(SIGUSR2). The child is told to stop (SIGTERM, which the training loop answers by
finishing the step and writing ``last.npz``), waited for, and the same job is handed
back to submitit to requeue; its next piece resumes from that checkpoint.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from ..backends import BACKENDS
from ..errors import RHNError
from ..tracking.mongo import redact
from .claim import Claim

# Thread counts of the numerical libraries: OpenMP (PyTorch's CPU kernels), MKL/OpenBLAS (NumPy),
# TensorFlow's two pools. Each run gets its share of the cores instead of all of them.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
PREEMPT_WAIT_S = 10  # after a SIGTERM under Slurm, how long the pre-timeout signal may take to follow


def entry_command(entry):
    """argv prefix of an entry point: a backend's name (its registered entry module) or a script path."""
    if entry in BACKENDS:
        return [sys.executable, "-m", *BACKENDS[entry].entry]
    if not os.path.isfile(entry):
        raise RHNError(
            f"entry point {entry!r} not found: give a backend ({', '.join(BACKENDS)}) or the path of rhn_train_torch.py"
        )
    return [sys.executable, os.path.abspath(entry)]


def child_env(threads):
    """The run's environment: its share of threads, and output written to the log as it comes."""
    env = {name: str(threads) for name in THREAD_VARIABLES}
    env["TF_NUM_INTEROP_THREADS"] = "1"  # one op at a time: the intra-op pool uses the share
    env["PYTHONUNBUFFERED"] = "1"  # the log shows each epoch when it ends (tail -f works)
    return env


class SweepJob:
    """Run ``argv`` (+ ``save_dir=FOLDER``, + ``resume=`` when there is something to resume) to its end.

    Called when a slot is free (local) or the Slurm job starts: it takes the run's claim,
    asks ``book`` (the database) what the run needs now, and starts, resumes or skips it."""

    def __init__(self, key, argv, save_dir, log_path, threads, book, stop_wait_s=75):
        self.key, self.argv, self.save_dir, self.log_path = key, list(argv), save_dir, log_path
        self.threads, self.book = threads, book
        self.stop_wait_s = stop_wait_s  # on preemption: Slurm kills the job this long after its signal
        self._child, self._stop_requested = None, False

    def command(self, resume):
        """The child's argv."""
        return self.argv + [f"save_dir={self.save_dir}"] + ([f"resume={resume}"] if resume else [])

    def result(self, outcome, start, returncode=None, reason=""):
        return {
            "key": self.key,
            "outcome": outcome,
            "returncode": returncode,
            "seconds": round(time.time() - start, 1),
            "reason": reason,
        }

    def leave(self, outcome, reason, start, announce):
        """The result of a run not started here ("skipped", "not started"), told in one line."""
        announce(f"{outcome:9s} {self.key}: {reason}")
        return self.result(outcome, start, reason=reason)

    def __call__(self, announce=print):
        """Start, resume or skip the run; ``announce(line)`` tells which, as it starts (Slurm: in the job's log)."""
        start = time.time()
        claim = Claim(self.save_dir)
        if not claim.take():
            return self.leave("skipped", f"another launch runs it ({claim.holder()})", start, announce)
        try:
            try:
                shown, action, resume = self.book.decide(self.key, self.save_dir)
            except RHNError as e:  # the database went away since the launch: leave the run for the next one
                return self.leave("not started", str(e), start, announce)
            if action == "skip":
                return self.leave("skipped", f"it is {shown} in the database", start, announce)
            if self._stop_requested:
                return self.leave("not started", "the sweep was asked to stop", start, announce)
            announce(f"resumed   {self.key} from {resume}" if resume else f"started   {self.key}")
            return self._run(self.command(resume), claim, start)
        finally:
            claim.release()

    def _run(self, argv, claim, start):
        os.makedirs(self.save_dir, exist_ok=True)
        env = dict(os.environ, **child_env(self.threads))
        on_slurm = "SLURM_JOB_ID" in os.environ and threading.current_thread() is threading.main_thread()
        self._terminated = False
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if on_slurm else None
        try:
            with open(self.log_path, "a") as log:
                log.write(f"\n$ {redact(' '.join(argv))}\n")
                log.flush()
                # Own session: a Ctrl-C in the sweep's terminal reaches the sweep, which stops each run once.
                # The run inherits the claim: it stays held while the run trains, whatever becomes of us.
                self._child = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, pass_fds=(claim.fd,)
                )
                rc = self._child.wait()
            self._child = None
            if rc != 0 and on_slurm and self._terminated:
                # Slurm signals every process of the job, so the run may have checkpointed and exited on
                # the SIGTERM of a preemption before submitit sees the SIGUSR2 that follows it: wait for
                # that signal (submitit then requeues and exits); a plain cancel is killed meanwhile.
                time.sleep(PREEMPT_WAIT_S)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        if rc != 0 and on_slurm:  # a failed run fails its Slurm job
            raise RuntimeError(f"run {self.key} exited with status {rc}: see {self.log_path}")
        return self.result("finished" if rc == 0 else "failed", start, rc)

    def _on_sigterm(self, signum, frame):
        self._terminated = True  # the child got it too (Slurm signals the whole job): it checkpoints

    def stop(self, sig=signal.SIGTERM):
        """Ask the running child to checkpoint and stop (one not yet started stays so); True if there was one."""
        self._stop_requested = True
        child = self._child
        if child is None or child.poll() is not None:
            return False
        try:
            child.send_signal(sig)
        except ProcessLookupError:
            return False
        return True

    def checkpoint(self, *args, **kwargs):
        """submitit's pre-timeout / preemption hook: checkpoint the child, then requeue this job."""
        import submitit

        child = self._child
        if self.stop() and not exited(child.pid, self.stop_wait_s):
            child.kill()
        self._child = None
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __getstate__(self):  # the child process stays behind when submitit pickles the job
        return {k: v for k, v in self.__dict__.items() if k not in ("_child", "_stop_requested")}

    def __setstate__(self, state):
        self.__dict__.update(state, _child=None, _stop_requested=False)


def exited(pid, timeout_s, poll_s=0.05):
    """Wait up to ``timeout_s`` for child ``pid`` to exit; True if it did. It is left unreaped.

    ``checkpoint`` runs in a signal handler that interrupted ``Popen.wait`` in ``__call__``, which
    holds the Popen's lock: ``Popen.poll`` and ``Popen.wait`` would see no exit until the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # reaped already
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
