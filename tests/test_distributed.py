"""Data-parallel training (torch.distributed over gloo) equals one process, in float64.

Two ranks are started by the test with torchrun (or, where the test must kill one
itself, as two processes with torchrun's environment); the reference is the same
config in one process.
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import REPO, run_experiment  # noqa: E402
from rhn_core import loop  # noqa: E402
from rhn_core.checkpoint import load_checkpoint  # noqa: E402
from rhn_core.distributed import World, check_batch, detect, shard_masks  # noqa: E402
from rhn_core.errors import RHNError, TrainingInterrupted  # noqa: E402
from rhn_core.masks import sample_masks  # noqa: E402
from rhn_core.params import spec_from_config  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.subprocess]

LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_launch.py")
# tiny, float64, all four dropouts on (base config values), 2 epochs of 179 steps with B = 4
CONFIG = dict(dataset="chars", dtype="float64", seed=7, device="cpu")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    import lzma
    from rhn_core.hyperparams import DEMO_TEXT

    path = tmp_path_factory.mktemp("text") / "alice_4k.txt"
    path.write_bytes(lzma.open(DEMO_TEXT).read()[:4000])
    return str(path)


def args(text, save_dir, **updates):
    cfg = dict(CONFIG, data_path=text, save_dir=str(save_dir), progress=False, **updates)
    return ["with", "tiny"] + [f"{k}={v}" for k, v in cfg.items()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra):
    e = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
    )
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TF_CONFIG", "RHN_TEST_FAULT"):
        e.pop(key, None)
    e.update(extra)
    return e


def torchrun(*argv, fault=None, nproc=2, timeout=300):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        LAUNCH,
        os.path.join(REPO, "rhn_train_torch.py"),
        *argv,
    ]
    extra = {"RHN_TEST_FAULT": fault} if fault else {}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(**extra))


@pytest.fixture(scope="module")
def one_process(text, tmp_path_factory):
    """The reference: the same run in one process."""
    folder = tmp_path_factory.mktemp("one")
    run = run_experiment(named=["tiny"], data_path=text, save_dir=str(folder), **CONFIG)
    return run, folder


def assert_same_weights(a_path, b_path):
    a, b = load_checkpoint(str(a_path))[0], load_checkpoint(str(b_path))[0]
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-10, err_msg=name)


def test_two_processes_train_exactly_as_one(text, one_process, tmp_path):
    run, folder = one_process
    result = torchrun("-F", str(tmp_path / "sacred"), *args(text, tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    # the same weights after 358 steps with dropout and carried state, the same best epoch
    assert_same_weights(folder / "last.npz", tmp_path / "two" / "last.npz")
    assert_same_weights(folder / "best.npz", tmp_path / "two" / "best.npz")
    _, state = load_checkpoint(str(tmp_path / "two" / "last.npz"))
    for split in ("train", "valid", "test"):  # epoch perplexities (valid and test evaluated sharded)
        np.testing.assert_allclose(state[f"{split}_perplexity"], run.info["logs"][f"{split}_perplexity"], rtol=1e-12)
    # one writer: rank 0 alone prints and records; one run, which knows the world size
    out = result.stdout
    assert out.count("Full Test Perplexity") == 1 and "2 processes (torchrun)" in out
    assert f"Full Test Perplexity: {run.info['full_test_perplexity']:.3f}" in out
    runs = [d for d in os.listdir(tmp_path / "sacred") if d.isdigit()]
    assert runs == ["1"]
    info = json.loads((tmp_path / "sacred" / "1" / "info.json").read_text())
    assert info["world_size"] == 2
    assert info["full_test_perplexity"] == pytest.approx(run.info["full_test_perplexity"], rel=1e-12)
    assert run.info["world_size"] == 1


def test_sigterm_on_one_rank_stops_both_and_one_process_resumes(text, one_process, tmp_path):
    _, folder = one_process
    # rank 1 gets SIGTERM at its 100th check (step 100 of 179 in epoch 1)
    result = torchrun(*args(text, tmp_path), fault="1:100:TERM")
    assert result.returncode != 0
    ranks = result.stderr.split("failed (exitcode")[0]  # then torchrun's own report of the exit codes
    assert ranks.count("TrainingInterrupted: stopped in epoch 1 at step 101;") == 2, result.stderr[-3000:]
    assert "Traceback" not in ranks
    _, state = load_checkpoint(str(tmp_path / "last.npz"))
    assert int(state["step"]) == 101 and state["hidden"].shape == (1, 4, 16)  # the global batch's state
    resumed = run_experiment(
        named=["tiny"], data_path=text, save_dir=str(tmp_path / "resumed"), resume=str(tmp_path / "last.npz"), **CONFIG
    )
    assert_same_weights(folder / "last.npz", tmp_path / "resumed" / "last.npz")
    assert resumed.info["world_size"] == 1


def test_one_process_checkpoint_resumes_on_two(text, one_process, tmp_path, monkeypatch):
    run, folder = one_process
    original, calls = loop.InterruptFlag.check, [0]

    def check(self):
        calls[0] += 1
        self.requested = calls[0] == 250 or self.requested  # what the signal handler does
        original(self)

    monkeypatch.setattr(loop.InterruptFlag, "check", check)
    with pytest.raises(TrainingInterrupted):
        run_experiment(named=["tiny"], data_path=text, save_dir=str(tmp_path), **CONFIG)
    monkeypatch.setattr(loop.InterruptFlag, "check", original)
    _, state = load_checkpoint(str(tmp_path / "last.npz"))
    assert int(state["epoch"]) == 2 and int(state["step"]) > 0
    result = torchrun(*args(text, tmp_path / "two", resume=tmp_path / "last.npz"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(folder / "last.npz", tmp_path / "two" / "last.npz")
    assert f"Full Test Perplexity: {run.info['full_test_perplexity']:.3f}" in result.stdout


@pytest.mark.parametrize("fault", ["KILL", "STOP"], ids=["rank-dies", "rank-hangs"])
def test_a_dead_or_stuck_rank_ends_the_other_with_a_clear_message(text, tmp_path, fault):
    # started without torchrun (which would kill the survivor itself): it must not wait forever
    port, procs = free_port(), []
    for rank in (0, 1):
        e = env(
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RHN_TEST_FAULT=f"1:30:{fault}",
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    LAUNCH,
                    os.path.join(REPO, "rhn_train_torch.py"),
                    *args(text, tmp_path, dist_timeout=8),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=e,
            )
        )
    try:
        out, err = procs[0].communicate(timeout=200)
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode != 0 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("RHNError: ")]
    assert len(errors) == 1 and "rank 0 of 2: another rank stopped answering" in errors[0], err[-2000:]
    if fault == "STOP":  # nothing closed a connection: the collective timeout ended the wait
        assert "dist_timeout=8 s" in errors[0]


def test_tf_two_replicas_train_exactly_as_one(text, tmp_path):
    """MirroredStrategy over two logical CPU devices (set up in a fresh process) against one replica."""
    pytest.importorskip("tensorflow")
    one = run_experiment(named=["tiny"], backend="tf", data_path=text, save_dir=str(tmp_path / "one"), **CONFIG)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "rhn_train_tf.py"), *args(text, tmp_path / "two", replicas=2)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"\(float64, \d+ CPU threads, 2 replicas\)", result.stdout), result.stdout[:2000]
    assert_same_weights(tmp_path / "one" / "last.npz", tmp_path / "two" / "last.npz")
    _, state = load_checkpoint(str(tmp_path / "two" / "last.npz"))
    for split in ("train", "valid", "test"):
        np.testing.assert_allclose(state[f"{split}_perplexity"], one.info["logs"][f"{split}_perplexity"], rtol=1e-12)
    assert f"Full Test Perplexity: {one.info['full_test_perplexity']:.3f}" in result.stdout


def test_tf_two_workers_with_tf_config_train_as_two_replicas(text, tmp_path):
    """The README's TF_CONFIG lines, two real workers on loopback with the default device=auto, against
    replicas=2 in one process (itself tested equal to one replica above)."""
    pytest.importorskip("tensorflow")
    auto = [a for a in args(text, tmp_path / "two") if not a.startswith("device=")]  # device=auto
    ports, workers = [free_port(), free_port()], []
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    for index in (0, 1):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(
            subprocess.Popen(
                [sys.executable, os.path.join(REPO, "rhn_train_tf.py"), *auto],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env(TF_CONFIG=tf_config),
            )
        )
    replicas = subprocess.run(
        [sys.executable, os.path.join(REPO, "rhn_train_tf.py"), *args(text, tmp_path / "replicas", replicas=2)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
    )
    try:
        outs = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            w.kill()
    for w, (_out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
        assert "could not join" not in err
    assert replicas.returncode == 0, replicas.stderr[-3000:]
    assert "2 processes (TF_CONFIG)" in outs[0][0] and outs[0][0].count("Full Test Perplexity") == 1
    assert "Full Test Perplexity" not in outs[1][0]  # one writer: worker 0
    assert_same_weights(tmp_path / "replicas" / "last.npz", tmp_path / "two" / "last.npz")
    assert_same_weights(tmp_path / "replicas" / "best.npz", tmp_path / "two" / "best.npz")
    _, two = load_checkpoint(str(tmp_path / "two" / "last.npz"))
    _, ref = load_checkpoint(str(tmp_path / "replicas" / "last.npz"))
    for split in ("train", "valid", "test"):
        np.testing.assert_allclose(two[f"{split}_perplexity"], ref[f"{split}_perplexity"], rtol=1e-12)


def test_bad_world_sizes_fail_before_any_work(monkeypatch, tmp_path):
    with pytest.raises(RHNError, match=r"batch_size=4 does not split evenly over 3 processes: .*divisible by 3"):
        check_batch(World(0, 3), 4)
    with pytest.raises(RHNError, match=r"batch_size=4 is smaller than the 8 parts .*8 processes"):
        check_batch(World(0, 8), 4)
    check_batch(World(), 3, 2, "torch")  # torch has no replicas: its backend refuses the key (test_config_keys)
    with pytest.raises(RHNError, match=r"does not split evenly over 3 replicas"):
        check_batch(World(), 4, 3, "tf")
    check_batch(World(1, 2), 4)
    # on the command line: one line, before the data is read or a process group joined
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "rhn_train_torch.py"),
            "with",
            "tiny",
            f"data_path={tmp_path}/absent",
            "batch_size=6",
        ],
        capture_output=True,
        text=True,
        env=env(RANK="0", WORLD_SIZE="4", LOCAL_RANK="0"),
        timeout=120,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("RHNError: ")]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert errors == [
        "RHNError: batch_size=6 does not split evenly over 4 processes: use a batch_size divisible "
        "by 4 (each part trains batch_size / 4 rows)"
    ]


def test_world_from_the_launchers():
    assert detect("torch", {}) == World()
    assert detect("torch", {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1, "torchrun")
    slurm = {"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "0", "MASTER_ADDR": "n1"}
    assert detect("torch", slurm) == World(2, 4, 0, "srun")
    assert slurm["RANK"] == "2" and slurm["WORLD_SIZE"] == "4" and slurm["MASTER_PORT"] == "29500"
    assert detect("torch", {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == World()  # the batch script itself
    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    assert detect("tf", {"TF_CONFIG": tf_config}) == World(2, 3, 0, "TF_CONFIG")
    with pytest.raises(RHNError, match="TF_CONFIG is not a tf.distribute cluster"):
        detect("tf", {"TF_CONFIG": "{}"})
    assert World(1, 2).rows(8) == slice(4, 8)


def test_masks_drawn_for_the_global_batch_and_sliced():
    cfg = run_experiment("print_config", ["tiny"], dataset="chars", vocab_size=50, drop_x=0.3).config
    spec = spec_from_config(cfg, 50)
    x = np.random.default_rng(0).integers(0, 50, (4, 5))
    full = sample_masks(np.random.default_rng(1), x, spec, 0.3, 0.5, 0.2, 0.4)
    half = shard_masks(full, World(1, 2).rows(4))
    np.testing.assert_array_equal(half.x, full.x[2:])
    np.testing.assert_array_equal(half.h[0], full.h[0][2:])
    assert half.o.shape == (2, 16)
