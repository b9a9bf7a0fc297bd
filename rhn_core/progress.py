"""Progress bars: tqdm's redrawn bar at a terminal, plain lines now and then otherwise.

(This module also decides, once at import, whether stdout and stderr are terminals:
the run's opening config is printed in colour only at a terminal.)

Under a scheduler, or with output redirected to a file, a redrawn bar writes a
carriage-return frame many times a second into the log (145 KB for one PTB epoch:
tens of MB for a 500-epoch run, unreadable with ``less`` or ``tail``). There a bar
writes one ordinary line at most every ``LINE_INTERVAL`` seconds instead, so a
short pass prints nothing and a long one a line a minute; the per-epoch summary
lines are printed by the loop either way.
"""

import os
import sys

from tqdm import tqdm

LINE_INTERVAL = 60.0  # seconds between two progress lines when output is not a terminal


def is_terminal(stream):
    """Whether ``stream`` writes to a terminal (False for a file, a pipe, a replaced stream)."""
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file descriptor
        return False


# Decided at import, before a run starts: Sacred's output capture then points the file
# descriptors at a pipe, and a terminal would no longer look like one.
STDERR_IS_TERMINAL = is_terminal(sys.stderr)
STDOUT_IS_TERMINAL = is_terminal(sys.stdout)


class LineProgress(tqdm):
    """A tqdm bar that writes whole lines, at most one every ``interval`` seconds."""

    def __init__(self, *args, interval=LINE_INTERVAL, **kwargs):
        self.interval, self._last_line = interval, None
        kwargs.update(mininterval=interval, maxinterval=interval)
        super().__init__(*args, **kwargs)
        self._last_line = getattr(self, "start_t", 0.0)

    def _write_line(self):
        self.fp.write(self.format_meter(**{**self.format_dict, "ncols": 0}) + "\n")
        self.fp.flush()

    def display(self, msg=None, pos=None):
        if msg == "" or self._last_line is None:  # tqdm clearing the bar, or its opening frame
            return False
        now = self._time()
        if now - self._last_line < self.interval:
            return False
        self._last_line = now
        self._write_line()
        return True

    def close(self):
        if not self.disable and self.leave and self.n:  # a kept bar ends with its final state
            self._write_line()
        self.leave = False
        super().close()


def progress_bar(file=None, interval=None, **kwargs):
    """``tqdm(**kwargs)`` at a terminal, else a ``LineProgress`` writing a line at most every
    ``interval`` seconds (default ``LINE_INTERVAL``); ``file``: default stderr."""
    terminal = STDERR_IS_TERMINAL if file is None else (hasattr(file, "isatty") and file.isatty())
    if terminal:
        return tqdm(file=file, **kwargs)
    return LineProgress(file=file, interval=LINE_INTERVAL if interval is None else interval, **kwargs)
