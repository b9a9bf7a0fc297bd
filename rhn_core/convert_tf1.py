"""Convert a checkpoint of the original code (rhn_train.py, TensorFlow 0.12 / 1.x) to rhn's .npz.

    python -m rhn_core.convert_tf1 ptb_1234_best_model.ckpt best.npz
    python rhn_train_torch.py evaluate with ptb_sota load_model=best.npz

The original names its variables ``model/embedding``, ``model/RHN<l>/h_<k>/Linear/Matrix``
and ``.../Bias`` (and ``t_<k>`` for the T gate), ``model/softmax_w`` (untied only) and
``model/softmax_b`` (docs/faithfulness.md, Parameter names). The canonical names of ``rhn_core.params`` are the
same without ``model/`` and ``/Linear``, and the layouts agree (micro-layer 0's matrix has
the input rows first, then the state rows), so the conversion only renames. Reading the
checkpoint needs TensorFlow; nothing else here does.
"""

import argparse
import re
import sys

from .checkpoint import save_checkpoint
from .errors import RHNError

ORIGINAL_NAME = re.compile(r"^model/(embedding|softmax_w|softmax_b|RHN\d+/[ht]_\d+/)(?:Linear/)?(Matrix|Bias)?$")


def canonical_name(name):
    """'model/RHN0/h_3/Linear/Matrix' -> 'RHN0/h_3/Matrix'; None for other variables."""
    match = ORIGINAL_NAME.match(name)
    if not match or bool(match.group(1).endswith("/")) != bool(match.group(2)):
        return None
    return match.group(1) + (match.group(2) or "")


def read_original_checkpoint(prefix):
    """Canonical params from an original checkpoint (its path prefix, as given to Saver.save)."""
    try:
        from .backends.tf_import import import_tensorflow

        tf = import_tensorflow()
    except ImportError:
        raise RHNError("reading a TensorFlow checkpoint needs TensorFlow: pip install tensorflow-cpu")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise RHNError(
            f"cannot read TensorFlow checkpoint {prefix!r} ({str(e).splitlines()[0]}): give the "
            f"prefix the original saved, e.g. ptb_1234_best_model.ckpt"
        )
    params = {}
    for name in reader.get_variable_to_shape_map():
        canonical = canonical_name(name)
        if canonical is not None:
            params[canonical] = reader.get_tensor(name)
    if "embedding" not in params:
        raise RHNError(f"{prefix} has no model/embedding variable: not a checkpoint of the original rhn_train.py")
    return params


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert an original rhn_train.py checkpoint to rhn's .npz.")
    parser.add_argument("checkpoint", help="checkpoint prefix written by the original (e.g. ptb_1_best_model.ckpt)")
    parser.add_argument("output", help="the .npz to write (use it as load_model=...)")
    args = parser.parse_args(argv)
    try:
        params = read_original_checkpoint(args.checkpoint)
    except RHNError as e:
        print(f"RHNError: {e}", file=sys.stderr)
        return 2
    save_checkpoint(args.output, params)
    print(f"wrote {args.output}: {len(params)} arrays, {sum(a.size for a in params.values()):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
