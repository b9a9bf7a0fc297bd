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
    """Ctrl-C during training: a resumable checkpoint was written first."""

    STATUS = "INTERRUPTED"


# traceback.format_exception_only omits the module for builtins, so the user
# reads "RHNError: ..." instead of "rhn_core.errors.RHNError: ...".
RHNError.__module__ = "builtins"
TrainingInterrupted.__module__ = "builtins"
