"""Train, evaluate or sample a Recurrent Highway Network language model (Zilly et al.,
arXiv 1607.03474) with any registered backend: python -m rhn_core BACKEND [Sacred arguments].
The backend ``numpy`` needs no framework (float64, one CPU process, slow: for checks and tiny
models); ``torch`` and ``tf`` are those of rhn_train_torch.py and rhn_train_tf.py. Every backend
reads and writes the same checkpoints.

Examples:
  python -m rhn_core numpy with tiny dtype=float64                 train a 16-unit model on the demo text
  python -m rhn_core numpy evaluate with tiny dtype=float64 load_model=runs/chars_1/best.npz
  python -m rhn_core torch with demo                               as python rhn_train_torch.py with demo
"""

import sys

from .backends import BACKENDS


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in BACKENDS:
        given = f"{argv[0]!r} is not a backend; " if argv else ""
        print(
            f"usage: python -m rhn_core BACKEND [Sacred arguments]: {given}give one of {', '.join(BACKENDS)}",
            file=sys.stderr,
        )
        return 2
    from .experiment import make_experiment

    ex = make_experiment(argv[0], main_globals=globals())
    ex.invocation = f"python -m rhn_core {argv[0]}"
    ex.run_commandline([ex.invocation, *argv[1:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
