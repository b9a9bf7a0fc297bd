"""Run an entry point as a rank of a data-parallel test job, optionally hitting it with a fault.

    torchrun --nproc_per_node=2 tests/dist_launch.py rhn_train_torch.py with ...

RHN_TEST_FAULT=RANK:CHECK:SIGNAL sends SIGNAL (TERM, INT, KILL) to that rank itself at its
CHECK-th interrupt check (one per training or evaluation step), through the real signal
handling, so the tests hit a chosen step without racing the clock.
"""

import os
import runpy
import signal
import sys

from rhn_core import loop

fault = os.environ.get("RHN_TEST_FAULT")
if fault:
    rank, at, name = fault.split(":")
    if os.environ.get("RANK") == rank:
        original, calls = loop.InterruptFlag.check, [0]

        def check(self):
            calls[0] += 1
            if calls[0] == int(at):
                os.kill(os.getpid(), getattr(signal, "SIG" + name))
            original(self)

        loop.InterruptFlag.check = check

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
