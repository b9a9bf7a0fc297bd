"""A real one-node Slurm cluster for the tests (docs/development.md says what it needs).

``SlurmCluster`` starts munge (or uses a running one), MariaDB (or uses a running
one), slurmdbd, slurmctld and slurmd as root, with every file in a scratch folder,
ports of its own and ``SLURM_CONF`` pointing at its ``slurm.conf`` (so sbatch,
sacct and submitit talk to it, and /etc/slurm is left alone). ``unavailable()``
says why a cluster cannot start here (not root, packages missing), for the skip.
Every daemon it starts it stops by PID.
"""

import os
import shutil
import socket
import subprocess
import time

DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
PATH_EXTRA = ("/usr/sbin", "/sbin")


def which(name):
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *PATH_EXTRA]))


def unavailable():
    """Why a cluster cannot start on this machine, or '' when it can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "starting Slurm daemons needs root (CI runs as root)"
    missing = [d for d in DAEMONS if not which(d)]
    if missing:
        return (
            f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge slurmdbd mariadb-server "
            f"(.ci/run does)"
        )
    return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ok(argv, **kw):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, **kw).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _wait(what, check, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout_s} s")


class SlurmCluster:
    def __init__(self, root):
        self.root, self.host = str(root), socket.gethostname().split(".")[0]
        self.processes, self.timings, self.munged_pid = [], {}, None
        self.name = f"rhn{os.getpid()}"  # cluster and accounting database of this test session
        self.conf = os.path.join(self.root, "slurm.conf")

    def _start(self, name, argv, **kw):
        log = open(os.path.join(self.root, f"{name}.log"), "ab")
        self.processes.append((name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)))

    def _step(self, name, start):
        self.timings[name] = round(time.time() - start, 2)

    def start(self):
        t0 = time.time()
        self._munge()
        self._step("munge", t0)
        self._mariadb()
        self._step("mariadb", t0)
        ctl, node, dbd = free_port(), free_port(), free_port()
        self._write_configs(ctl, node, dbd)
        os.environ["SLURM_CONF"] = self.conf  # sbatch, sacct, scontrol and submitit of this process
        self._start("slurmdbd", [which("slurmdbd"), "-D"], env=dict(os.environ))
        _wait("slurmdbd", lambda: _port_open(dbd), 30)
        self._step("slurmdbd", t0)
        self._start("slurmctld", [which("slurmctld"), "-D", "-i"], env=dict(os.environ))
        _wait("slurmctld", lambda: "UP" in _out(["scontrol", "ping"]), 30)
        self._step("slurmctld", t0)
        self._start("slurmd", [which("slurmd"), "-D", "-N", self.host], env=dict(os.environ))
        _wait("slurmd (node idle)", lambda: "idle" in _out(["sinfo", "-h", "-o", "%t"]), 60)
        self._step("slurmd: node idle", t0)
        return self

    def _munge(self):
        if _ok("munge -n | unmunge", shell=True):
            return  # a munged already runs (the socket is machine-wide)
        os.makedirs("/run/munge", exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", which("munged")], check=True, timeout=20)
        _wait("munged", lambda: _ok("munge -n | unmunge", shell=True), 20)
        try:  # it daemonizes: its PID file says whom to stop at the end
            with open("/run/munge/munged.pid") as f:
                self.munged_pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass

    def _mariadb(self):
        if _ok(["mariadb", "-e", "select 1"]):
            return  # a server already answers on the default socket; this cluster gets its own database
        os.makedirs("/run/mysqld", exist_ok=True)
        shutil.chown("/run/mysqld", "mysql", "mysql")
        self._start("mariadbd", [which("mariadbd"), "--user=mysql", "--skip-networking"])
        _wait("mariadbd", lambda: _ok(["mariadb", "-e", "select 1"]), 60)

    def _write_configs(self, ctl, node, dbd):
        cpus = os.cpu_count() or 1
        free_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2**20
        state = os.path.join(self.root, "state")
        os.makedirs(state, exist_ok=True)
        lines = {
            "ClusterName": self.name,
            "SlurmctldHost": f"{self.host}(127.0.0.1)",
            "SlurmUser": "root",
            "SlurmctldPort": ctl,
            "SlurmdPort": node,
            "AuthType": "auth/munge",
            "MpiDefault": "none",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "ReturnToService": 2,
            "SlurmctldPidFile": os.path.join(self.root, "slurmctld.pid"),
            "SlurmdPidFile": os.path.join(self.root, "slurmd.pid"),
            "StateSaveLocation": state,
            "SlurmdSpoolDir": os.path.join(self.root, "spool"),
            "SlurmctldLogFile": os.path.join(self.root, "slurmctld.file.log"),
            "SlurmdLogFile": os.path.join(self.root, "slurmd.file.log"),
            "AccountingStorageType": "accounting_storage/slurmdbd",
            "AccountingStorageHost": "localhost",
            "AccountingStoragePort": dbd,
            # Fast tests (SLURM.md): a requeued job would wait ~150 s. KillWait (SIGTERM to SIGKILL; 30 s by
            # default, 5 s in SLURM.md) leaves a cancelled run time to checkpoint on a loaded machine.
            "AuthInfo": "cred_expire=10",
            "SchedulerParameters": "sched_interval=2,bf_interval=2",
            "KillWait": 20,
        }
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        text += (
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={max(512, free_mb - 512)} "
            f"State=UNKNOWN\nPartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP\n"
        )
        with open(self.conf, "w") as f:
            f.write(text)
        dbd_conf = os.path.join(self.root, "slurmdbd.conf")
        with open(dbd_conf, "w") as f:
            f.write(
                f"AuthType=auth/munge\nDbdHost=localhost\nDbdPort={dbd}\nSlurmUser=root\n"
                f"StorageType=accounting_storage/mysql\nStorageHost=localhost\nStorageUser=root\n"
                f"StorageLoc=slurm_acct_{self.name}\nPidFile={os.path.join(self.root, 'slurmdbd.pid')}\n"
                f"LogFile={os.path.join(self.root, 'slurmdbd.file.log')}\n"
            )
        os.chmod(dbd_conf, 0o600)

    def stop(self):
        # munged and MariaDB serve the whole machine: another cluster (a second test session) may use them.
        shared_in_use = _other_slurmctld(self.processes)
        for name, process in reversed(self.processes):
            if name == "mariadbd" and shared_in_use:
                continue
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes = []
        if self.munged_pid and not shared_in_use:
            try:
                os.kill(self.munged_pid, 15)
            except ProcessLookupError:
                pass
            self.munged_pid = None
        if os.environ.get("SLURM_CONF") == self.conf:
            del os.environ["SLURM_CONF"]
        _ok(["mariadb", "-e", f"drop database if exists slurm_acct_{self.name}"])

    def logs(self):
        """The daemons' logs, for a failing test's message."""
        out = []
        for name in os.listdir(self.root):
            if name.endswith(".log"):
                with open(os.path.join(self.root, name), errors="replace") as f:
                    out.append(f"--- {name}\n{f.read()[-3000:]}")
        return "\n".join(out)


def _out(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _other_slurmctld(ours):
    """Whether a slurmctld other than ours runs on this machine (read from /proc)."""
    mine = {p.pid for _, p in ours}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except OSError:
            continue
        if argv0.endswith(b"slurmctld") and int(pid) not in mine:
            return True
    return False
