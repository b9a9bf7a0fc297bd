"""One run of a sweep as a child process: its command line, its threads, its checkpoint on a signal.

``SweepJob`` is the callable both executors run: the local executor calls it in a
thread, Slurm runs it through submitit. It starts the entry point (``python
rhn_train_torch.py with ...``) as a child with its own thread count and appends the
child's output to the run's log. A run that finds ``last.npz`` in its folder resumes
from it, so a requeued job continues where the previous piece stopped.

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

# Thread counts of the numerical libraries: OpenMP (PyTorch's CPU kernels), MKL/OpenBLAS (NumPy),
# TensorFlow's two pools. Each run gets its share of the cores instead of all of them.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
PREEMPT_WAIT_S = 10  # after a SIGTERM under Slurm, how long the pre-timeout signal may take to follow


def entry_command(entry):
    """argv prefix of an entry point: a backend's name (its registered entry module) or a script path."""
    if entry in BACKENDS:
        return [sys.executable, "-m", *BACKENDS[entry].entry]
    if not os.path.isfile(entry):
        raise RHNError(f"entry point {entry!r} not found: give a backend ({', '.join(BACKENDS)}) "
                       f"or the path of rhn_train_torch.py")
    return [sys.executable, os.path.abspath(entry)]


def child_env(threads):
    """The run's environment: its share of threads, and output written to the log as it comes."""
    env = {name: str(threads) for name in THREAD_VARIABLES}
    env["TF_NUM_INTEROP_THREADS"] = "1"  # one op at a time: the intra-op pool uses the share
    env["PYTHONUNBUFFERED"] = "1"  # the log shows each epoch when it ends (tail -f works)
    return env


class SweepJob:
    """Run ``argv`` (+ ``save_dir=FOLDER``, + ``resume=`` when there is something to resume) to its end."""

    def __init__(self, key, argv, save_dir, log_path, threads, resume="", stop_wait_s=75):
        self.key, self.argv, self.save_dir, self.log_path = key, list(argv), save_dir, log_path
        self.threads, self.resume = threads, resume
        self.stop_wait_s = stop_wait_s  # on preemption: Slurm kills the job this long after its signal
        self._child = None

    def command(self):
        """The child's argv; a checkpoint of an earlier piece in the run's folder wins over ``resume``."""
        last = os.path.join(self.save_dir, "last.npz")
        resume = last if os.path.isfile(last) else self.resume
        return self.argv + [f"save_dir={self.save_dir}"] + ([f"resume={resume}"] if resume else [])

    def __call__(self):
        os.makedirs(self.save_dir, exist_ok=True)
        argv = self.command()
        env = dict(os.environ, **child_env(self.threads))
        on_slurm = "SLURM_JOB_ID" in os.environ and threading.current_thread() is threading.main_thread()
        self._terminated = False
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if on_slurm else None
        start = time.time()
        try:
            with open(self.log_path, "a") as log:
                log.write(f"\n$ {redact(' '.join(argv))}\n")
                log.flush()
                # Own session: a Ctrl-C in the sweep's terminal reaches the sweep, which stops each run once.
                self._child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True)
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
        result = {"key": self.key, "returncode": rc, "seconds": round(time.time() - start, 1)}
        if rc != 0 and on_slurm:  # a failed run fails its Slurm job
            raise RuntimeError(f"run {self.key} exited with status {rc}: see {self.log_path}")
        return result

    def _on_sigterm(self, signum, frame):
        self._terminated = True  # the child got it too (Slurm signals the whole job): it checkpoints

    def stop(self, sig=signal.SIGTERM):
        """Ask the running child to checkpoint and stop; True if there was one."""
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
        if self.stop():
            try:
                child.wait(self.stop_wait_s)
            except subprocess.TimeoutExpired:
                child.kill()
        self._child = None
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __getstate__(self):  # the child process stays behind when submitit pickles the job
        return {k: v for k, v in self.__dict__.items() if k != "_child"}

    def __setstate__(self, state):
        self.__dict__.update(state, _child=None)
