"""Printing that cannot cost training: a closed pipe, a lost terminal or a full log device only stops the printing.

``python rhn_train_torch.py ... | head`` closes stdout after a few lines; an SSH session that drops takes
the terminal with it (writes then fail with EIO); a log file's disk fills up. Unguarded, the next
``print`` raises and the run ends with a traceback, its epoch lost. ``guard_std_streams`` wraps
stdout and stderr: the first failed write stops writing to that stream, says so once on the other
stream when it still works, and the run goes on (checkpoints are written before an epoch's lines
are printed). At exit the failed stream's descriptor is pointed at /dev/null, so Python's final
flush of what is still buffered cannot print "Exception ignored" either.
"""

import atexit
import os
import sys


class GuardedStream:
    """A text stream whose writes never raise: after the first failure they are dropped."""

    def __init__(self, stream, name):
        self.stream, self.name = stream, name
        self.failed = None  # the error that stopped the writing
        self.other = None  # the stream told about a failure (stderr for stdout, stdout for stderr)

    def _fail(self, error):
        if self.failed is not None:
            return
        self.failed = error
        try:
            fd = self.stream.fileno()
            atexit.register(_silence, fd)
        except (AttributeError, OSError, ValueError):
            pass
        reason = getattr(error, "strerror", None) or type(error).__name__
        if self.other is not None:
            self.other.write(
                f"\nOutput to {self.name} failed ({reason}): no more printing there; training and checkpoints go on\n"
            )
            self.other.flush()

    def write(self, text):
        if self.failed is None:
            try:
                return self.stream.write(text)
            except (OSError, ValueError) as e:  # ValueError: the stream was closed
                self._fail(e)
        return len(text)

    def flush(self):
        if self.failed is None:
            try:
                self.stream.flush()
            except (OSError, ValueError) as e:
                self._fail(e)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):  # fileno, isatty, encoding...: those of the stream
        return getattr(self.stream, name)


def _silence(fd):
    """Point ``fd`` at /dev/null (what Python still flushes into it at exit goes nowhere)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass


def guard_std_streams():
    """Replace sys.stdout and sys.stderr by guarded streams (once); returns them."""
    if isinstance(sys.stdout, GuardedStream):
        return sys.stdout, sys.stderr
    out, err = GuardedStream(sys.stdout, "stdout"), GuardedStream(sys.stderr, "stderr")
    out.other, err.other = err, out
    sys.stdout, sys.stderr = out, err
    import logging

    logging.raiseExceptions = False  # a log handler whose stream failed drops the record quietly
    return out, err
