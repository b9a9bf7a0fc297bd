"""TensorFlow imported without its native start-up notices.

While ``import tensorflow`` loads its shared libraries, their static initialisers log through
absl before absl is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot filter them: on CPUs where
TensorFlow turns on its oneDNN operations every process prints "All log messages before
absl::InitializeLog() ..." and "oneDNN custom operations are on ..." (twice, once per library),
on every user's screen and into every run's stored output. The C++ code writes to file
descriptor 2 directly, so the only way to keep these lines away without changing which kernels
TensorFlow uses (``TF_ENABLE_ONEDNN_OPTS=0`` would) is to hold descriptor 2 during the import and
pass on every line that is not such a notice. ``TF_CPP_MIN_LOG_LEVEL=0`` in the environment shows
everything, as TensorFlow documents.
"""

import os
import re
import sys
import tempfile

# An absl / glog record: severity letter, MMDD, time, thread, file:line]. E.g.
# "I0000 00:00:1796479678.384580    2290 port.cc:153] oneDNN custom operations are on. ..."
_RECORD = re.compile(r"^([IWEF])\d{4} [\d:]+\.\d+\s+\d+ [^ \]]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# Printed by absl itself, once per library, ahead of the records of its pre-initialisation.
_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# The second line of cpu_feature_guard's record (a record's message may span lines).
_CONTINUATION = "To enable the following instructions:"


def min_log_level():
    """TensorFlow's own filter level: 0 shows all, 1 hides INFO, 2 also WARNING, 3 also ERROR."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def keep_lines(text, level):
    """The lines of ``text`` that TensorFlow's start-up filter at ``level`` would let through.

    FATAL records and everything that is not an absl record (a Python warning, a traceback)
    always pass."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        record = _RECORD.match(line)
        if record:
            dropping = _SEVERITY[record.group(1)] < min(level, 3)
        elif line.startswith(_PRE_INIT):
            dropping = level > 0
        elif not (dropping and line.startswith(_CONTINUATION)):
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


def import_tensorflow():
    """``import tensorflow`` with its start-up notices filtered at ``TF_CPP_MIN_LOG_LEVEL`` (3 unless set)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    level = min_log_level()
    if level <= 0:
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
            import keras  # noqa: F401  (its import may load further libraries)
        except BaseException:
            level = 0  # the import failed: pass on everything it said
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            passed = keep_lines(capture.read().decode("utf-8", "replace"), level)
            if passed:
                sys.stderr.write(passed)
                sys.stderr.flush()
    return tensorflow
