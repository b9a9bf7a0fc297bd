"""enwik8/text8 at full scale: preparation time and peak memory for a 100 MB corpus,
loading time of the prepared cache, and evaluation speed at enwik8_sota shapes.

    python benchmarks/char_data.py               # everything (about 2-3 minutes on 2 cores)
    python benchmarks/char_data.py --skip-eval

The corpus is synthetic (100,000,000 bytes with 205 distinct values, the format of
enwik8; the real files are not on this machine), so checksums are those of the
synthetic file. Each measurement runs in a fresh subprocess; peak memory is that
process's maximum resident set size. Evaluation speed is timed on a prefix and
extrapolated to the 5 M-symbol valid/test splits (the passes are linear in length).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 100_000_000

CHILD = r"""
import json, sys, time, resource
sys.path.insert(0, {repo!r})
start = time.time()
{body}
print(json.dumps(dict(seconds=time.time() - start, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      **extra)))
"""


def child(body, **fmt):
    code = CHILD.format(repo=REPO, body=body.format(**fmt))
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


MAKE = """
import hashlib, zipfile
import numpy as np
rng = np.random.default_rng(0)
values = np.sort(rng.choice(256, 205, replace=False)).astype(np.uint8)
data = values[rng.integers(0, 205, {size}, dtype=np.uint8) % 205]
data[:205] = values
data.tofile({raw!r})
with zipfile.ZipFile({archive!r}, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
    z.write({raw!r}, "enwik8")
extra = dict(sha256=hashlib.sha256(data.tobytes()).hexdigest())
"""


def make_corpus(folder):
    """The synthetic corpus, made in a subprocess so that this one stays small (peak
    memory is inherited through fork)."""
    raw, archive = os.path.join(folder, "enwik8"), os.path.join(folder, "enwik8.zip")
    r = child(MAKE, size=SIZE, raw=raw, archive=archive)
    return raw, archive, dict(url=None, size=SIZE, sha256=r["sha256"], classes=205)


PREPARE = """
from rhn_core.data.fetch import prepare_byte_corpus
prepare_byte_corpus("enwik8", {out!r}, {source!r}, {expected!r}, progress=False)
extra = {{}}
"""

LOAD = """
import numpy as np
from rhn_core.data.readers import read_byte_corpus
c = read_byte_corpus({out!r}, "enwik8", 5_000_000, "")
checksum = int(np.asarray(c.test[-1000:]).sum())  # touch the data
extra = dict(train=len(c.train), valid=len(c.valid), test=len(c.test))
"""

EVAL = """
import numpy as np, torch
from rhn_core.hyperparams import resolve_config
from rhn_core.params import spec_from_config, init_params
from rhn_core.backends.torch_rhn import Backend
from rhn_core.data import readers
cfg = resolve_config("enwik8_sota")
spec = spec_from_config(cfg)
be = Backend(spec, init_params(spec, np.random.default_rng(0)), device="cpu")
ids = np.random.default_rng(1).integers(0, 205, 200_000).astype(np.uint8)
def timed(batches, n):
    state, losses, start = None, [], None
    for i, (x, y) in enumerate(batches):
        if i == 1:
            be.to_numpy(losses); start = time.time(); done = 0
        state = be.zero_state(x.shape[0]) if state is None else state
        loss, state = be.eval_step(x, y, state); losses.append(loss)
        if i >= 1: done += x.size
        if i >= n: break
    be.to_numpy(losses)
    return done / (time.time() - start)
rows = readers.batch_rows(ids, 128)
batched = timed((readers.minibatch(rows, i, 50) for i in range(readers.epoch_size(rows, 50))), 6)
full = timed(readers.stream_windows(ids, 1000), 3)
extra = dict(batched_chars_per_s=batched, full_chars_per_s=full)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.time()
        raw, archive, expected = make_corpus(folder)
        print(f"synthetic enwik8-format corpus: {SIZE:,} bytes, 205 values (made in {time.time() - start:.1f} s)\n")
        print(f"{'step':<38} {'seconds':>8} {'peak MB':>8}")
        for name, source in (("prepare from enwik8.zip", archive), ("prepare from the raw file", raw)):
            out = os.path.join(folder, name.split()[-1].replace(".", "_"))
            r = child(PREPARE, out=out, source=source, expected=expected)
            print(f"{name:<38} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f}")
        r = child(LOAD, out=out)
        print(
            f"{'load prepared cache (memory-mapped)':<38} {r['seconds']:>8.2f} {r['peak_mb']:>8.0f}"
            f"   splits {r['train']:,} / {r['valid']:,} / {r['test']:,}"
        )
        baseline = child("extra = {{}}")
        print(f"{'(python start-up alone)':<38} {baseline['seconds']:>8.2f} {baseline['peak_mb']:>8.0f}")
    if not args.skip_eval:
        r = child(EVAL)
        print(f"\nenwik8_sota evaluation on CPU ({os.cpu_count()} cores), random weights:")
        for key, label, shape in (
            ("batched_chars_per_s", "batched valid/test pass (B=128, T=50)", 4_998_400),
            ("full_chars_per_s", "final full pass (B=1, windows of 1000)", 4_999_999),
        ):
            print(f"  {label}: {r[key]:,.0f} chars/s -> {shape / r[key] / 3600:.1f} h for a 5 M split")


if __name__ == "__main__":
    main()
