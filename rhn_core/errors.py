"""User-facing errors: one line that says what is wrong and what to do.

They subclass Sacred's ``SacredError`` with the traceback switched off, so the
command line prints ``RHNError: <message>`` and exits non-zero, while Sacred's
observers still record the run as failed. Without Sacred (e.g. the GPU check, which runs
the PyTorch backend with only torch, triton and NumPy installed) they are plain exceptions.
"""

try:
    from sacred.utils import SacredError, SacredInterrupt
except ImportError:

    class SacredError(Exception):
        def __init__(self, message, print_traceback=True):
            super().__init__(message)

    class SacredInterrupt(Exception):
        STATUS = "INTERRUPTED"


class RHNError(SacredError):
    """Bad input or an impossible request; the message says how to fix it."""

    def __init__(self, message):
        super().__init__(message, print_traceback=False)


class TrainingInterrupted(SacredInterrupt, RHNError):
    """A signal stopped the work (Ctrl-C, SIGTERM, SIGHUP, SIGUSR2); the message names the checkpoint on disk.

    The command line exits with 128 + the number of the first signal (130 for Ctrl-C, 143 for SIGTERM,
    129 for SIGHUP), as a shell reports a process stopped by that signal: the same status whether the
    checkpoint was written or a second Ctrl-C cut its writing short (an older whole one is then named)."""

    STATUS = "INTERRUPTED"
    last_exit_status = None  # of the latest one raised in this process, read by the command line

    def __init__(self, message, signum=2):
        super().__init__(message)
        self.exit_status = 128 + int(signum)
        TrainingInterrupted.last_exit_status = self.exit_status


# traceback.format_exception_only omits the module for builtins, so the user
# reads "RHNError: ..." instead of "rhn_core.errors.RHNError: ...".
RHNError.__module__ = "builtins"
TrainingInterrupted.__module__ = "builtins"
