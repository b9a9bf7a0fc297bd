"""Plant four bugs that once passed the whole suite, one at a time in a scratch copy of the tree, and run the tests that must catch each.

    python tools/planted_bugs.py            # bugs 1-4, each against its tests
    python tools/planted_bugs.py 2 4        # some of them
    python tools/planted_bugs.py --list     # what each bug is and which tests run

These four once passed the whole suite. Each is a one-line edit (exact text, so a change
of the planted line makes this script stop with a message instead of testing nothing). The
tree is copied (tracked and untracked, not ignored files) into a temporary folder, the edit
made there, and the listed tests run against that copy; a bug is caught when at least one
test fails. Not part of CI (it is a check of the tests, like tools/mutation.py).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUGS = {  # number: (what, file, the exact text, its planted replacement, pytest arguments)
    1: (
        "the training loop starts every minibatch from a zero state (no TBPTT carry)",
        "rhn_core/loop.py",
        "shard_masks(masks, mine), state, lr)",
        "shard_masks(masks, mine), self.backend.zero_state(mine.stop - mine.start), lr)",
        ["tests/test_loop.py"],
    ),
    2: (
        "the mask sampler ignores tied_noise",
        "rhn_core/masks.py",
        '("drop_x", "drop_i", "drop_h", "drop_o", "tied_noise")',
        '("drop_x", "drop_i", "drop_h", "drop_o")',
        ["tests/test_masks.py", "tests/test_config_keys.py", "-k", "sampler or tied_noise"],
    ),
    3: (
        "init_other_bias from the config never reaches the parameters",
        "rhn_core/params.py",
        'init_other_bias=cfg.get("init_other_bias", "uniform"),\n',
        "",
        ["tests/test_config_keys.py", "tests/test_params.py", "-k", "bias"],
    ),
    4: (
        "TF's target_log_probs ignores the dropout masks",
        "rhn_core/backends/tf_rhn.py",
        "logits, state = self.model(x, state, masks)\n        return -tf.nn",
        "logits, state = self.model(x, state)\n        return -tf.nn",
        ["tests/test_backends.py", "-k", "target_log_probs"],
    ),
}


def copy_tree(dst):
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    for name in filter(None, files):
        src = os.path.join(REPO, name)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, name))


def plant(tree, number):
    _, path, old, new, _ = BUGS[number]
    with open(os.path.join(tree, path)) as f:
        source = f.read()
    if source.count(old) != 1:
        sys.exit(
            f"bug {number}: the line to plant is no longer once in {path} ({old.splitlines()[0]!r}): "
            f"update BUGS in tools/planted_bugs.py"
        )
    with open(os.path.join(tree, path), "w") as f:
        f.write(source.replace(old, new))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bugs", nargs="*", type=int, help="some of 1 2 3 4 (default: all)")
    parser.add_argument("--list", action="store_true", help="list the bugs and their tests")
    args = parser.parse_args(argv)
    unknown = [b for b in args.bugs if b not in BUGS]
    if unknown:
        parser.error(f"unknown bug(s) {unknown}: use some of 1 2 3 4")
    caught = {}
    for number in args.bugs or list(BUGS):
        what, path, _, _, tests = BUGS[number]
        print(f"bug {number}: {what} ({path}); tests: {' '.join(tests)}", flush=True)
        if args.list:
            continue
        with tempfile.TemporaryDirectory(prefix=f"planted{number}-") as tree:
            copy_tree(tree)
            plant(tree, number)
            env = dict(os.environ, PYTHONPATH=tree)
            env.setdefault("RHN_SHARED_DATA", os.path.join(REPO, "data"))
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
        lines = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        print("\n".join(["  " + line for line in lines] + ["  " + result.stdout.strip().splitlines()[-1]]))
        caught[number] = result.returncode == 1 and bool(lines)
        print(f"  -> {'CAUGHT' if caught[number] else 'NOT CAUGHT'}", flush=True)
    if not args.list:
        print("caught: " + ", ".join(f"bug {n}: {'yes' if c else 'NO'}" for n, c in caught.items()))
        return 0 if all(caught.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
