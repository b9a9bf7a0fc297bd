"""The ``rhn-sweep`` command (``python -m rhn_core.sweep``): run a sweep, or show where it stands.

    rhn-sweep run --name depth -m 127.0.0.1:27017:rhn -s depth=1,2,4 --equal-params 2.4e6 \\
        torch with dataset=ptb data_path=data max_max_epoch=2
    rhn-sweep run ... --dry-run                       # the runs and their parameter counts
    rhn-sweep run ... --executor slurm --slurm-partition gpu --slurm-time 600 --slurm-gpus 1
    rhn-sweep status --name depth -m 127.0.0.1:27017:rhn

``run`` is idempotent: launched again, it skips completed runs and runs that are alive,
and resumes failed, interrupted and silent ones from their last checkpoint. It decides
as each run starts, under the run's claim (``claim``), so two launches of one sweep never
both start a run: the one that finds the run claimed skips it. Options may also follow
the entry point (``... torch with demo --dry-run``). Problems
end in one ``error: ...`` line on stderr and exit status 2.
"""

import argparse
import json
import os
import sys
import threading
import time

from ..backends import BACKENDS
from ..errors import RHNError
from ..tracking.mongo import parse_target, redact
from ..tracking.report import Parser, fmt, quality, run_command
from . import grid, state
from .claim import Claim
from .executors import LocalExecutor, SlurmExecutor
from .runner import SweepJob, entry_command


def add_common(p):
    p.add_argument("--name", required=True, help="the sweep's name: its runs carry it in the database")
    p.add_argument("-m", "--mongo_db", metavar="ADDR", help="MongoDB address, as -m of the entry points")
    p.add_argument("-F", "--file_storage", metavar="DIR", help="a file observer folder, as -F of the entry points")
    p.add_argument("--sweep-dir", default="sweeps", help="run folders and logs go to SWEEP_DIR/NAME (default sweeps)")
    p.add_argument(
        "--stale-after",
        type=float,
        default=state.STALE_S,
        metavar="S",
        help=f"a RUNNING run silent this long is taken as dead and resumed (default {state.STALE_S})",
    )


def parse_args(argv):
    p = Parser(prog="rhn-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    r = sub.add_parser("run", help="launch (or re-launch) a sweep")
    add_common(r)
    r.add_argument(
        "-s",
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=VALUES",
        help="a swept key: 1,2,4 or a:b[:c] (range); several -s give their product",
    )
    r.add_argument(
        "-z",
        "--zip",
        action="append",
        default=[],
        metavar="KEY=VALUES",
        help="keys swept together (the i-th values of each in one run); as one axis of the product",
    )
    r.add_argument(
        "--equal-params",
        type=float,
        metavar="N",
        help="each run's hidden_size is the one whose parameter count is closest to N",
    )
    r.add_argument("--dry-run", action="store_true", help="print the runs and their parameter counts; start nothing")
    r.add_argument("--executor", choices=("local", "slurm"), default="local")
    r.add_argument("--parallel", type=int, default=1, metavar="N", help="local: runs at a time (default 1)")
    r.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="threads per run (default: local, the CPU cores / --parallel; slurm, --slurm-cpus)",
    )
    r.add_argument("--slurm-partition", metavar="P")
    r.add_argument("--slurm-time", type=int, default=60, metavar="MIN", help="time limit of each job (minutes)")
    r.add_argument("--slurm-cpus", type=int, default=1, metavar="N", help="CPUs per job")
    r.add_argument("--slurm-mem", metavar="MEM", help="memory per job, e.g. 8G")
    r.add_argument("--slurm-gpus", type=int, default=0, metavar="N", help="GPUs per job")
    r.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. account=proj, qos=low (repeatable)",
    )
    r.add_argument("--slurm-parallel", type=int, metavar="K", help="at most K jobs of the array at once")
    r.add_argument(
        "--slurm-signal-delay",
        type=int,
        default=90,
        metavar="S",
        help="the pre-timeout signal comes S seconds before the time limit (default 90)",
    )
    r.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and print their states")
    r.add_argument(
        "entry", help=f"a backend ({', '.join(BACKENDS)}) or the path of an entry point (rhn_train_torch.py)"
    )
    r.add_argument("fixed", nargs=argparse.REMAINDER, help="[with] NAMED_CONFIG... KEY=VALUE... for every run")
    st = sub.add_parser("status", help="each run of a sweep: state, epoch, best valid figure")
    add_common(st)
    args = p.parse_args(argv)
    if args.command == "run":
        hoist_options(r, args)
    return args


def hoist_options(parser, args):
    """Options of ``run`` written after the entry point (``... max_max_epoch=3 --dry-run``) are the sweep's:
    the words after the entry are ``with``, named configs and KEY=VALUE, none of which begins with '-'."""
    options, fixed, words = [], [], list(args.fixed)
    while words:
        word = words.pop(0)
        if not word.startswith("-"):
            fixed.append(word)
            continue
        options.append(word)
        action = parser._option_string_actions.get(word.split("=", 1)[0])
        if action is not None and action.nargs is None and "=" not in word and words:
            options.append(words.pop(0))  # the option's value
    if options:
        # --name again: argparse checks required options among the words it is given
        parser.parse_args(["--name", args.name, *options, args.entry], namespace=args)
    args.fixed = fixed


# --- the runs and their state ---------------------------------------------------------------
def plan_path(args):
    return os.path.join(args.sweep_dir, args.name, "sweep.json")


def book_of(args):
    return state.Book(
        args.name, args.mongo_db, args.file_storage and os.path.abspath(args.file_storage), args.stale_after
    )


def rows(planned, groups, stale_s):
    """One row per run (planned ones first, in order, then any other key the database has)."""
    keys = list(planned) + sorted(k for k in groups if k not in planned)
    table = []
    for key in keys:
        pieces = groups.get(key, [])
        shown, action = state.state(pieces, stale_s)
        last = pieces[-1] if pieces else {"info": {}, "config": {}}
        table.append(
            {
                "key": key,
                "state": shown,
                "action": action,
                "pieces": pieces,
                "params": (planned.get(key) or {}).get("nr_parameters", last["info"].get("nr_parameters")),
                "epoch": last["info"].get("epoch_nr"),
                "best": quality(last, "best_valid") if pieces else "-",
                "id": last.get("id"),
            }
        )
    return table


def print_table(table, extra=()):
    cols = [
        ("run", "key", False),
        ("params", "params", True),
        ("state", "state", False),
        ("pieces", "pieces", True),
        ("epoch", "epoch", True),
        ("best valid", "best", True),
        ("last id", "id", True),
        *extra,
    ]

    def cell(row, field):
        value = row.get(field)
        if field == "pieces":
            return str(len(value))
        return fmt(value, "," if field == "params" else "")

    cells = [[c[0] for c in cols]] + [[cell(r, c[1]) for c in cols] for r in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for row in cells:
        print("  ".join(v.rjust(w) if c[2] else v.ljust(w) for v, w, c in zip(row, widths, cols)).rstrip())


def load_plan(args):
    try:
        with open(plan_path(args)) as f:
            return {r["key"]: r for r in json.load(f)["runs"]}
    except (OSError, ValueError, KeyError):
        return {}


def status(args):
    source = book_of(args).source()
    try:
        groups = state.pieces_by_key(source.runs(sweep=args.name))
    finally:
        source.close()
    planned = load_plan(args)
    if not groups and not planned:
        raise RHNError(
            f"no run of sweep {args.name!r} in {source.label} and no plan in {plan_path(args)}: "
            f"check --name and the address"
        )
    print(f"sweep {args.name} in {source.label}")
    table = rows(planned, groups, args.stale_after)
    print_table(table)
    counts = {}
    for row in table:
        counts[row["state"].split(" ")[0]] = counts.get(row["state"].split(" ")[0], 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


# --- launching ---------------------------------------------------------------------------------
def run_argv(args, named, fixed, run):
    """The entry point's argv for ``run`` (save_dir and resume are added by the job)."""
    sweep = {"name": args.name, "key": run.key, "values": run.values}
    argv = entry_command(args.entry) + ["with", *named]
    argv += [f"{k}={v!r}" for k, v in {**fixed, **run.values}.items()]
    if args.mongo_db:
        argv += ["-m", args.mongo_db]
    if args.file_storage:
        argv += ["-F", os.path.abspath(args.file_storage)]
    # Sacred's default capture (fd) pipes the output through a `tee` child; Slurm signals every process of a
    # job, and a tee stopped by the signal would break the run's output while it checkpoints.
    return argv + ["--capture=sys", f"--sweep={json.dumps(sweep, sort_keys=True)}"]


def write_plan(args, named, fixed, runs):
    folder = os.path.join(args.sweep_dir, args.name)
    os.makedirs(os.path.join(folder, "logs"), exist_ok=True)
    plan = {
        "name": args.name,
        "entry": args.entry,
        "named_configs": named,
        "fixed": fixed,
        "sweep": args.sweep,
        "zip": args.zip,
        "equal_params": args.equal_params,
        "database": redact(args.mongo_db) if args.mongo_db else args.file_storage,
        "runs": [{"key": r.key, "values": r.values, "nr_parameters": r.nr_parameters} for r in runs],
    }
    tmp = f"{plan_path(args)}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(plan, f, indent=2, default=str)
    os.replace(tmp, plan_path(args))


def launch(args):
    for option in ("parallel", "threads", "slurm_time", "slurm_cpus", "slurm_parallel"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise RHNError(f"--{option.replace('_', '-')}={value} must be at least 1")
    named, fixed = grid.parse_fixed(args.fixed)
    fixed.setdefault("progress", False)  # bars would fill the logs; the epoch lines remain
    runs = grid.expand(named, fixed, args.sweep, args.zip, args.equal_params)
    entry_command(args.entry)  # a missing entry point fails before anything starts
    if args.mongo_db:
        parse_target(args.mongo_db)
    if args.dry_run:
        print(f"sweep {args.name}: {len(runs)} runs of {args.entry} {' '.join(args.fixed)}")
        for i, run in enumerate(runs, 1):
            print(f"{i:3d}  {run.key:40s}  {run.nr_parameters:>12,} parameters")
        return
    book = book_of(args)
    groups = book.groups()
    write_plan(args, named, fixed, runs)
    planned = {r.key: {"nr_parameters": r.nr_parameters} for r in runs}
    table = [row for row in rows(planned, groups, args.stale_after) if row["key"] in planned]
    folder = os.path.abspath(os.path.join(args.sweep_dir, args.name))
    threads = args.threads or (
        max(1, (os.cpu_count() or 1) // args.parallel) if args.executor == "local" else args.slurm_cpus
    )
    jobs = []
    for run, row in zip(runs, table):
        save_dir = os.path.join(folder, run.folder)
        resume = state.resume_source(row["pieces"], save_dir) if row["action"] == "resume" else ""
        row["todo"] = {"skip": "skip", "start": "start"}.get(row["action"], f"resume {resume or '(from scratch)'}")
        if row["action"] != "skip" and Claim(save_dir).held_elsewhere():
            row["action"], row["todo"] = "skip", f"skip (another launch runs it: {Claim(save_dir).holder()})"
        if row["action"] != "skip":
            jobs.append(
                SweepJob(
                    run.key,
                    run_argv(args, named, fixed, run),
                    save_dir,
                    os.path.join(folder, "logs", f"{run.folder}.log"),
                    threads,
                    book,
                    stop_wait_s=max(10, args.slurm_signal_delay - 15),
                )
            )
    print(f"sweep {args.name}: {len(runs)} runs, {len(jobs)} to run ({threads} thread(s) each); folders in {folder}")
    print_table(table, extra=[("to do", "todo", False)])
    if not jobs:
        return
    print("each run is decided again as it starts: one that another launch has begun by then is left to it")
    if args.executor == "local":
        return run_local(args, jobs)
    run_slurm(args, jobs, folder)


def run_local(args, jobs):
    start, total, done, lock = time.time(), len(jobs), [], threading.Lock()

    def say(line):  # one write per line under a lock: two runs starting at once print two lines
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def report(job, result):
        if isinstance(result, str):
            return say(result)
        outcome = result["outcome"]
        if outcome in ("skipped", "not started"):
            return  # told as it was decided
        with lock:
            done.append(job)
            n = len(done)
        status = (
            "finished" if outcome == "finished" else f"stopped with status {result['returncode']} (log: {job.log_path})"
        )
        say(f"[{n}/{total}] {job.key} {status} after {result['seconds']:.0f} s")

    results = LocalExecutor(args.parallel).run(jobs, report)
    counts = {o: sum(r["outcome"] == o for r in results) for o in ("finished", "failed", "skipped", "not started")}
    ended = counts["finished"]
    print(
        f"sweep {args.name}: {ended} of {total} runs ended well in {time.time() - start:.0f} s"
        + (f"; {counts['skipped']} skipped (finished or run by another launch)" if counts["skipped"] else "")
        + (f"; {counts['failed']} stopped or failed" if counts["failed"] else "")
        + (f"; {counts['not started']} not started" if counts["not started"] else "")
        + ("; launch again to resume them" if counts["failed"] or counts["not started"] else "")
    )
    return 0 if ended + counts["skipped"] == total else 1


def run_slurm(args, jobs, folder):
    executor = SlurmExecutor(
        os.path.join(folder, "slurm", "%j"),
        partition=args.slurm_partition,
        time_min=args.slurm_time,
        cpus=args.slurm_cpus,
        mem=args.slurm_mem,
        gpus=args.slurm_gpus,
        options=args.slurm_option,
        array_parallelism=args.slurm_parallel,
        signal_delay_s=args.slurm_signal_delay,
    )
    handles = executor.submit(jobs)
    for job, handle in zip(jobs, handles):
        print(f"submitted {job.key}: Slurm job {handle.job_id}")
    if args.wait:
        executor.wait(handles, lambda handle, st: print(f"Slurm job {handle.job_id}: {st}", flush=True))
        print(
            f"the runs' states: rhn-sweep status --name {args.name} "
            f"{'-m ' + redact(args.mongo_db) if args.mongo_db else '-F ' + args.file_storage}"
        )


def main(argv=None):
    return run_command(parse_args, lambda args: (status if args.command == "status" else launch)(args), argv)
