"""Where the runs of a sweep execute: local child processes, or a Slurm job array through submitit.

Both run the same ``SweepJob`` callables. ``local`` keeps N children at a time and,
on Ctrl-C or SIGTERM, asks each running child once to checkpoint and stop (a second
signal kills them). ``slurm`` submits one job array; Slurm's pre-timeout signal makes
submitit checkpoint and requeue a job (``SweepJob.checkpoint``).
"""

import concurrent.futures
import shutil
import signal
import threading
import time

from ..errors import RHNError


class LocalExecutor:
    """``parallel`` runs at a time as child processes of this one."""

    def __init__(self, parallel):
        self.parallel = parallel
        self.stopping = threading.Event()
        self._running, self._lock, self._signals = set(), threading.Lock(), 0

    def _handle(self, signum, frame):
        self._signals += 1
        self.stopping.set()
        with self._lock:
            running = list(self._running)
        if self._signals == 1:
            print(
                f"\n{signal.Signals(signum).name}: each running run saves a checkpoint and stops "
                f"({len(running)} running; again to kill them); launch the sweep again to resume",
                flush=True,
            )
            for job in running:
                job.stop(signal.SIGTERM)
        else:
            for job in running:
                job.stop(signal.SIGKILL)

    def _one(self, job, report):
        def announce(line):
            report(job, line)

        if self.stopping.is_set():
            result = job.leave("not started", "the sweep was asked to stop", time.time(), announce)
        else:
            with self._lock:
                self._running.add(job)
            try:
                result = job(announce=announce)
            finally:
                with self._lock:
                    self._running.discard(job)
        report(job, result)
        return result

    def run(self, jobs, report):
        """Run ``jobs``; ``report(job, line)`` says what each does as it starts, ``report(job, result)`` is its end."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
                futures = [pool.submit(self._one, job, report) for job in jobs]
                while not all(f.done() for f in futures):  # short waits: signals are handled in between
                    time.sleep(0.2)
                return [f.result() for f in futures]
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class SlurmExecutor:
    """One Slurm job array (submitit) with the resources of every run."""

    def __init__(
        self,
        folder,
        partition=None,
        time_min=60,
        cpus=1,
        mem=None,
        gpus=0,
        options=(),
        array_parallelism=None,
        signal_delay_s=90,
        max_requeues=3,
    ):
        try:
            import submitit
        except ImportError:
            raise RHNError("the slurm executor needs submitit: pip install submitit")
        if not shutil.which("sbatch"):
            raise RHNError("sbatch not found: run the slurm executor on a Slurm login node, or use --executor local")
        self.executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
        extra = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or not key:
                raise RHNError(f"--slurm-option {option!r} is not KEY=VALUE: write e.g. account=myproj or qos=low")
            extra[key.lstrip("-").replace("-", "_")] = value
        params = dict(time=time_min, cpus_per_task=cpus, signal_delay_s=signal_delay_s, additional_parameters=extra)
        if partition:
            params["partition"] = partition
        if mem:
            params["mem"] = mem
        if gpus:
            params["gpus_per_node"] = gpus
        if array_parallelism:
            params["array_parallelism"] = array_parallelism
        self.executor.update_parameters(**params)

    def submit(self, jobs):
        """The submitit jobs of ``jobs``, submitted as one array."""
        with self.executor.batch():
            handles = [self.executor.submit(job) for job in jobs]
        return handles

    @staticmethod
    def wait(handles, report, poll_s=5.0):
        """Wait for every job; ``report(handle, state)`` once each ends."""
        pending = list(handles)
        while pending:
            for handle in list(pending):
                if handle.done():
                    pending.remove(handle)
                    report(handle, handle.state)
            if pending:
                time.sleep(poll_s)
