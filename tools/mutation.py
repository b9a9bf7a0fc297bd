"""Mutation testing of rhn_core with mutmut 3, one module at a time, each against its own fast tests.

    python tools/mutation.py                      # every module below, then the table
    python tools/mutation.py masks reference      # some modules
    python tools/mutation.py --report             # the table (and survivors) of the last runs
    python tools/mutation.py --list               # the modules and their tests
    python tools/mutation.py --sample 60 --seed 1 # the same 60 random mutants per module (see below)
    python tools/mutation.py params --only '*hidden_size_for_count__mutmut_1[45]'   # (re)test these mutants

Not part of CI (it runs each module's tests once per mutant). mutmut 3 only runs, for a
mutant, the selected tests that called the mutated function, so the selection per module
below is what makes it fit a 2-core machine: the fast tests that exercise that module
(no subprocess, no MongoDB, no multi-minute run). Each module gets its own work folder,
``.mutation/<module>/`` (a copy of the working tree plus a generated ``setup.cfg [mutmut]``
section), so results are cached per module and a rerun only retries what changed (delete
the folder to start over). TensorFlow functions run without XLA there (``mutation_plugin``
below): the same graphs, and compiling them with XLA would be most of a TF test's time.

The table counts a mutant as killed when a test failed or it timed out (a mutant that loops
forever is caught); "no tests" mutants (code no selected test calls) count as not killed.

``--sample N --seed S`` tests a random sample of N mutants per module instead of all of them,
where all would not fit the time there is: mutmut first generates every mutant (cheap), then
the N whose names come first in the order of sha256("S:name") are tested. The choice depends
only on the names, so two trees (e.g. --repo an older revision) get the same mutants wherever
a function is unchanged. The table then gives the kill rate of the sample with its binomial
standard error, sqrt(p (1 - p) / N). Mutants of the sample that already have a result are not
tested again (an interrupted run resumes), unless --retry asks for the survivors.
"""

import argparse
import fnmatch
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {  # name: (source file, pytest arguments selecting its fast tests)
    "params": (
        "rhn_core/params.py",
        ["tests/test_params.py", "tests/test_config_keys.py", "tests/test_backends.py", "-k", "not tf"],
    ),
    "masks": (
        "rhn_core/masks.py",
        ["tests/test_masks.py", "tests/test_reference.py", "tests/test_config_keys.py", "tests/test_loop.py"],
    ),
    "reference": (
        "rhn_core/reference.py",
        ["tests/test_reference.py", "tests/test_backends.py", "tests/test_loop.py", "-k", "not tf"],
    ),
    "readers": (
        "rhn_core/data/readers.py",
        [
            "tests/test_readers.py",
            "tests/test_config_keys.py",
            "tests/test_loop.py",
            "tests/test_prepare.py::test_prepared_cache_is_memory_mapped_and_equals_the_original_mapping",
            "tests/test_prepare.py::test_raw_zip_in_data_path_is_read_directly",
            "tests/test_prepare.py::test_damaged_sources_are_refused_and_nothing_is_written",
            "tests/test_bad_inputs.py::test_empty_file",
            "tests/test_bad_inputs.py::test_truncated_compressed_file",
            "tests/test_bad_inputs.py::test_truncated_plain_ptb_is_caught_by_its_vocabulary",
            "tests/test_bad_inputs.py::test_data_too_short_for_the_batch_shape",
            "tests/test_bad_inputs.py::test_char_data_with_the_wrong_number_of_symbols",
        ],
    ),
    "torch_rhn": (
        "rhn_core/backends/torch_rhn.py",
        [
            "tests/test_backends.py",
            "tests/test_loop.py",
            "tests/test_config_keys.py::test_device_places_the_model",
            "-k",
            "not tf",
        ],
    ),
    "loop": (
        "rhn_core/loop.py",
        [
            "tests/test_loop.py",
            "tests/test_config_keys.py",
            "tests/test_experiment.py::test_interrupted_and_resumed_run_ends_with_the_same_weights",
            "tests/test_experiment.py::test_evaluate_scores_a_checkpoint_like_the_training_run",
            "tests/test_experiment.py::test_metrics_are_logged_per_epoch",
            "tests/test_experiment.py::test_full_evaluation_equals_the_t1_pass",
            "tests/test_bad_inputs.py::test_nan_loss_stops_and_keeps_the_last_good_checkpoint",
            "tests/test_bad_inputs.py::test_resume_inside_an_epoch_needs_the_same_batch_shape",
            "tests/test_bad_inputs.py::test_resume_from_a_best_checkpoint_is_refused",
        ],
    ),
    "tf_rhn": ("rhn_core/backends/tf_rhn.py", ["tests/test_backends.py", "-k", "tf"]),
    # What is stored and resumed. Code reached only through a subprocess (the entry points, a sweep's
    # runs, torchrun ranks) is out of mutmut's reach: its mutants run in the test process only, so each
    # module is tested by tests that call it in process (tests/test_store_units.py for the pieces the
    # end-to-end tests reach only through a subprocess).
    "checkpoint": (
        "rhn_core/checkpoint.py",
        [
            "tests/test_store_units.py",
            "tests/test_faults.py::test_other_files_say_what_they_are_not",
            "tests/test_bad_inputs.py::test_evaluate_without_a_checkpoint",
            "tests/test_bad_inputs.py::test_corrupt_checkpoint",
            "tests/test_bad_inputs.py::test_resume_from_a_best_checkpoint_is_refused",
            "tests/test_bad_inputs.py::test_checkpoints_are_written_atomically",
            "tests/test_loop.py::test_evaluation_scale_and_bits_on_a_checkpoint",
            "tests/test_experiment.py::test_interrupted_and_resumed_run_ends_with_the_same_weights",
        ],
    ),
    "runlock": (
        "rhn_core/runlock.py",
        [
            "tests/test_store_units.py",
            "tests/test_one_writer.py::test_default_folders_are_claimed_one_per_run",
            "tests/test_bad_inputs.py::test_resume_from_a_best_checkpoint_is_refused",
            "tests/test_experiment.py::test_interrupted_and_resumed_run_ends_with_the_same_weights",
        ],
    ),
    "sweep_grid": (
        "rhn_core/sweep/grid.py",
        [
            "tests/test_sweep.py",
            "tests/test_sweep_claims.py",
            "-m",
            "not slow and not mongo",
        ],
    ),
    "sweep_state": (
        "rhn_core/sweep/state.py",
        [
            "tests/test_sweep.py",
            "tests/test_sweep_claims.py",
            "tests/test_store_units.py",
            "-m",
            "not slow and not mongo",
        ],
    ),
    "sweep_claim": (
        "rhn_core/sweep/claim.py",
        ["tests/test_sweep_claims.py", "tests/test_store_units.py", "-m", "not slow and not mongo"],
    ),
    "sweep_runner": (
        "rhn_core/sweep/runner.py",
        ["tests/test_sweep_claims.py", "tests/test_store_units.py", "-m", "not slow and not mongo"],
    ),
    "sweep_executors": (
        "rhn_core/sweep/executors.py",
        ["tests/test_sweep_claims.py", "tests/test_store_units.py", "-m", "not slow and not mongo"],
    ),
    "observer": (
        "rhn_core/tracking/observer.py",
        [
            "tests/test_store_units.py",
            "tests/test_tracking.py::test_run_is_stored_in_mongodb[torch]",
            "tests/test_tracking.py::test_resume_from_a_run_in_mongodb",
        ],
    ),
    "distributed": (
        "rhn_core/distributed/world.py",
        [
            "tests/test_store_units.py",
            "tests/test_distributed.py::test_world_from_the_launchers",
            "tests/test_distributed.py::test_bad_world_sizes_fail_before_any_work",
            "tests/test_distributed.py::test_masks_drawn_for_the_global_batch_and_sliced",
            "tests/test_one_writer.py::test_srun_ranks_are_named_srun_every_time_they_are_read",
        ],
    ),
    "distributed_shard": (
        "rhn_core/distributed/shard.py",
        ["tests/test_store_units.py", "tests/test_distributed.py::test_masks_drawn_for_the_global_batch_and_sliced"],
    ),
    "fetch": (
        "rhn_core/data/fetch.py",
        [
            "tests/test_prepare.py",
            "tests/test_store_units.py",
            "-m",
            "not slow",
            "-k",
            "not command_line and not checksums_are_the_published and not no_archive and not training_from",
        ],
    ),
    "mc": (
        "rhn_core/mc.py",
        [
            "tests/test_mc.py",
            "tests/test_config_keys.py",
            "tests/test_contract.py::test_a_run_train_resume_evaluate_mc_sample_touches_only_the_contract",
            "-k",
            "mc or contract",
        ],
    ),
    "sample": (
        "rhn_core/sample.py",
        [
            "tests/test_sample.py",
            "tests/test_config_keys.py",
            "tests/test_contract.py::test_a_run_train_resume_evaluate_mc_sample_touches_only_the_contract",
            "-k",
            "sample or contract",
        ],
    ),
}
MODULES["runtime"] = ("rhn_core/runtime.py", MODULES["loop"][1])  # the loop's numbers and data, shared by every command
# Only these functions of a module are mutated (globs on mutmut's mutant names), where the whole
# module would take hours: in the loop, the training and evaluation passes and their numbers
# (not the logging, plots, signal handling or command wrappers).
FOCUS = {
    "loop": [
        "*Trainerǁtrain_epoch__*",
        "*Trainerǁ_epoch__*",
        "*Trainerǁ_flush__*",
        "*Evaluatorǁ_run__*",
        "*Evaluatorǁbatched__*",
        "*Evaluatorǁfull__*",
    ],
    "runtime": ["*x_perplexity__*", "*x_bits__*", "*x_corpus_and_spec__*"],
}
# Lines never mutated: the wording of messages and progress bars (the bad-input tests check the
# messages; mutating every word of them would double the run for no information on the numbers).
# Modules whose mutants start from mutmut's fork server (a process that has only collected the
# tests) instead of a fork of the process that ran them: TensorFlow's thread pools, started by
# that run, leave a forked copy waiting forever (mutants of tf_rhn sat there at no CPU).
FORK_SERVER = {"tf_rhn"}
NOT_MUTATED = [r"^\s*print\(", r"^\s*raise ", r'^\s*f"', r"desc=", r"set_postfix"]
PLUGIN = '''"""Written by tools/mutation.py: TensorFlow functions without XLA during mutation runs."""
import os

try:  # torch, then triton, then tensorflow, as tests/conftest.py (another order aborts)
    import torch  # noqa: F401
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass
try:
    import triton  # noqa: F401
except ImportError:
    pass
try:
    import tensorflow as tf
except ImportError:
    tf = None

if tf is not None:
    import inspect
    import types

    # mutmut replaces a mutated method by a functools.wraps wrapper (*args, **kwargs). Keras reads
    # a layer's __init__ with inspect.getfullargspec, which (unlike inspect.signature) does not
    # follow __wrapped__, and fails on every layer whose __init__ has mutants: show it the original.
    from keras.src.ops import operation as _operation
    _unwrapping = types.ModuleType("inspect")
    _unwrapping.__dict__.update(inspect.__dict__)
    _unwrapping.getfullargspec = lambda f: inspect.getfullargspec(inspect.unwrap(f))
    _operation.inspect = _unwrapping

    _function = tf.function

    def _without_xla(*args, **kwargs):
        kwargs["jit_compile"] = False
        return _function(*args, **kwargs)

    tf.function = _without_xla
'''
KILLED = {"killed", "timeout"}


def work_dir(root, module):
    return os.path.join(root, module)


def prepare(source_repo, folder, module):
    """Copy the working tree (tracked and untracked, not ignored files) and write the mutmut config."""
    source, selection = MODULES[module]
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=source_repo, check=True, capture_output=True, text=True
    ).stdout.split("\n")
    os.makedirs(folder, exist_ok=True)
    for name in filter(None, files):
        src, dst = os.path.join(source_repo, name), os.path.join(folder, name)
        if not os.path.isfile(src) or (os.path.isfile(dst) and open(src, "rb").read() == open(dst, "rb").read()):
            continue  # unchanged files keep their time stamps: mutmut's cache stays valid
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
    # tests that do not exist in this tree (an older revision) are left out of the selection
    selection = [
        a for a in selection if not a.startswith("tests/") or os.path.isfile(os.path.join(folder, a.split("::")[0]))
    ]
    with open(os.path.join(folder, "mutation_plugin.py"), "w") as f:
        f.write(PLUGIN)
    lines = ["[mutmut]", "source_paths = rhn_core", f"only_mutate = {source}", "do_not_mutate_patterns ="]
    if module in FORK_SERVER:
        lines.insert(1, "process_isolation = forkserver")
    lines += [f"    {p}" for p in NOT_MUTATED]
    lines += [
        "also_copy =",
        "    mutation_plugin.py",
        "    data",
        "    rhn_train_torch.py",
        "    rhn_train_tf.py",
        "pytest_add_cli_args =",
        "    -p",
        "    mutation_plugin",
        "    -p",
        "    no:cacheprovider",
        "    -W",
        "    ignore",
        "pytest_add_cli_args_test_selection =",
    ]
    lines += [f"    {a}" for a in selection]
    with open(os.path.join(folder, "setup.cfg"), "w") as f:
        f.write("\n".join(lines) + "\n")


def run(folder, max_children, shared_data, mutants=(), fresh_stats=False):
    """mutmut run; ``fresh_stats``: first forget which tests call which function (see below)."""
    if fresh_stats:
        # mutmut records once which tests call each function and afterwards only adds tests with new
        # names: a test changed to call another function would not be run for its mutants. A retry
        # (tests were added or changed) or --only collects the record again, one run of the selection.
        stats = os.path.join(folder, "mutants", "mutmut-stats.json")
        if os.path.isfile(stats):
            os.remove(stats)
    env = dict(os.environ, OMP_NUM_THREADS="1", RHN_SHARED_DATA=shared_data, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)  # mutmut puts the mutated copy first on sys.path
    mutmut = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *mutants]
    return subprocess.run(mutmut, cwd=folder, env=env).returncode


GENERATE = (
    "import os, mutmut.__main__ as m; m.set_mutant_under_test('mutant_generation'); "
    "os.makedirs('mutants', exist_ok=True); m.copy_src_dir(); m.copy_also_copy_files(); "
    "m.setup_source_paths(); m.create_mutants(1)"
)


def generate(folder):
    """Only mutmut's first step (write the mutants and their names), so that a sample can be drawn."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-c", GENERATE], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)


def sample(names, size, seed):
    """The `size` names first in the order of sha256("seed:name"): random, but the same for equal names."""
    order = sorted(names, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    return set(order[:size])


def results(folder, module):
    """{mutant name: status} from mutmut's meta file of the module."""
    from mutmut.stats import status_by_exit_code

    meta = os.path.join(folder, "mutants", MODULES[module][0] + ".meta")
    if not os.path.isfile(meta):
        return {}
    with open(meta) as f:
        codes = json.load(f)["exit_code_by_key"]
    focus = FOCUS.get(module)
    return {
        name: status_by_exit_code[code]
        for name, code in codes.items()
        if not focus or any(fnmatch.fnmatch(name, f) for f in focus)
    }


def selected(folder, module, size, seed):
    """{mutant name: status} of the module, only the sample's mutants when size is given."""
    statuses = results(folder, module)
    if size:
        chosen = sample(statuses, size, seed)
        statuses = {name: status for name, status in statuses.items() if name in chosen}
    return statuses


def report(root, modules, show_survivors, size=None, seed=0):
    """The table: all mutants, or the sample (then "of" is how many mutants the module has)."""
    print(
        f"{'module':<16}{'mutants':>9}{'of' if size else '':>7}{'killed':>8}{'timeout':>9}{'survived':>10}"
        f"{'no tests':>10}{'other':>7}{'kill rate':>11}{'± s.e.' if size else '':>9}"
    )
    rows = [("all", Counter())]
    for module in modules:
        statuses = selected(work_dir(root, module), module, size, seed)
        c = Counter(statuses.values())
        c["n"], c["of"] = len(statuses), len(results(work_dir(root, module), module))
        rows.insert(-1, (module, c))
        rows[-1][1].update(c)
    for module, c in rows if len(modules) > 1 else rows[:-1]:
        n = c["n"]
        killed = c["killed"] + c["timeout"]
        other = n - killed - c["survived"] - c["no tests"]
        p = killed / n if n else None
        rate = f"{100 * p:.1f} %" if n else "-"
        se = f"{100 * math.sqrt(p * (1 - p) / n):.1f} %" if size and n else ""
        print(
            f"{module:<16}{n:>9}{c['of'] if size else '':>7}{c['killed']:>8}{c['timeout']:>9}{c['survived']:>10}"
            f"{c['no tests']:>10}{other:>7}{rate:>11}{se:>9}"
        )
    if show_survivors:
        for module in modules:
            statuses = selected(work_dir(root, module), module, size, seed)
            alive = [m for m, s in statuses.items() if s not in KILLED]
            if alive:
                print(
                    f"\n{module}: not killed (see one with: cd {work_dir(root, module)} && python -m mutmut show NAME)"
                )
                for name in sorted(alive):
                    print(f"  {name}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help=f"some of: {', '.join(MODULES)} (default: all)")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--work", default=os.path.join(REPO, ".mutation"), help="work folders (default .mutation/)")
    parser.add_argument(
        "--repo",
        default=REPO,
        help="the tree to mutate (default: this one; e.g. an older "
        "revision checked out with git worktree, for a baseline)",
    )
    parser.add_argument(
        "--shared-data",
        default=os.environ.get("RHN_SHARED_DATA", os.path.join(REPO, "data")),
        help="folder of ptb.*.txt.xz for the real-PTB tests (default: RHN_SHARED_DATA, else data/)",
    )
    parser.add_argument("--report", action="store_true", help="only print the table of the last runs")
    parser.add_argument(
        "--retry",
        action="store_true",
        help="test again the mutants the last run did not kill (mutmut keeps a result until the mutated code changes)",
    )
    parser.add_argument("--survivors", action="store_true", help="list the mutants not killed")
    parser.add_argument("--list", action="store_true", help="list the modules and their test selection")
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="test only N random mutants per module (the same names in every tree, see --seed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of --sample (default 0)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="GLOB",
        help="(re)test only the mutants whose names match (mutmut's names, * and [] as in fnmatch)",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}: use some of {', '.join(MODULES)}")
    if args.only and (args.sample or args.retry):
        parser.error("--only names the mutants itself: give it without --sample and --retry")
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample {args.sample}: give the number of mutants per module, 1 or more")
    modules = args.modules or list(MODULES)
    if args.list:
        for m in modules:
            print(f"{m:<16} {MODULES[m][0]:<32} {' '.join(MODULES[m][1])}")
        return 0
    if not args.report:
        for module in modules:
            folder = work_dir(args.work, module)
            if args.only:  # mutmut reruns the mutants it is given by name, whatever their last result
                prepare(args.repo, folder, module)
                names = args.only
            elif args.sample or module in FOCUS:
                # mutmut retests every mutant it is given by name (or glob): name only those of the
                # sample / focus without a result (the survivors with --retry), so that a run resumes
                prepare(args.repo, folder, module)
                generate(folder)
                statuses = selected(folder, module, args.sample, args.seed)
                names = [m for m, s in statuses.items() if (s not in KILLED if args.retry else s == "not checked")]
                if not names:
                    continue
            else:  # the whole module, no names: mutmut itself skips the mutants that have a result
                retry = [m for m, s in results(folder, module).items() if s not in KILLED] if args.retry else []
                if args.retry and not retry:
                    continue
                names = retry
                prepare(args.repo, folder, module)
            print(f"--- {module}: mutmut in {folder}", flush=True)
            if run(folder, args.max_children, os.path.abspath(args.shared_data), names, args.retry or bool(args.only)):
                print(f"mutmut failed for {module} (see above)", file=sys.stderr)
                return 1
    report(args.work, modules, args.survivors or not args.report, args.sample, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
