"""Fetch or import, verify and prepare a dataset in this folder (the successor of the
original's create_enwik8.py; no HDF5 export: this port reads its own cache).

    python data/prepare.py enwik8                          # downloads enwik8.zip when online
    python data/prepare.py enwik8 --from ~/Downloads/enwik8.zip
    python data/prepare.py text8 --from /data/text8 --data-dir /data/text8
    python data/prepare.py ptb                             # downloads simple-examples.tgz when online
    python data/prepare.py ptb --from simple-examples.tgz  # or a folder of ptb.*.txt (plain, .xz, .gz)

PTB needs no preparation when you already have its three files, plain or compressed:
point a run's data_path at their folder. Preparing verifies their md5 and writes plain
copies here. enwik8 and text8 are worth preparing: runs then memory-map them.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rhn_core.errors import RHNError  # noqa: E402
from rhn_core.data.fetch import prepare_byte_corpus, prepare_ptb  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["enwik8", "text8", "ptb"])
    parser.add_argument(
        "--from",
        dest="source",
        help="a local copy instead of downloading: enwik8/text8: the zip or the unzipped "
        "file; ptb: simple-examples.tgz, a folder of ptb.*.txt (plain, .xz, .gz) "
        "or one of those files",
    )
    parser.add_argument(
        "--data-dir",
        default=os.path.dirname(os.path.abspath(__file__)),
        help="where the prepared files go (the data_path of a run); default: this folder",
    )
    args = parser.parse_args(argv)
    start = time.time()
    try:
        if args.dataset == "ptb":
            written = prepare_ptb(args.data_dir, args.source)
            print(f"verified and wrote {', '.join(written)}; train with data_path={args.data_dir}")
        else:
            path, n, classes = prepare_byte_corpus(args.dataset, args.data_dir, args.source)
            print(
                f"verified {args.dataset} ({n:,} symbols, {classes} classes) and wrote {path} "
                f"in {time.time() - start:.1f} s; train with data_path={args.data_dir}"
            )
    except RHNError as e:
        print(f"RHNError: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
