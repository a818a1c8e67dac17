"""A throwaway one-node Slurm cluster on loopback, for tests (Debian's slurm-wlm 22.05 and munge).

No systemd here, so the daemons are started by hand, each with its own files under one folder (config,
state, spool, logs, pid files, a private munge key and socket), so nothing clashes with a system Slurm:

    with SlurmCluster(tmp_path / "slurm") as cluster:
        job_id = cluster.sbatch(script_path)
        state = cluster.wait(job_id)

``start()`` and ``stop()`` are idempotent; ``stop()`` ends only the daemons this object started, by pid.
:func:`unavailable_reason` says why a cluster cannot run here (``None`` when it can).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "srun")


def _which(name: str) -> str | None:
    # slurmctld, slurmd and munged live in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def unavailable_reason() -> str | None:
    """Why a local cluster cannot be started here, or None when it can."""
    missing = [n for n in (*DAEMONS, *CLIENTS) if _which(n) is None]
    if missing:
        return (f"Slurm/munge not installed (missing {', '.join(missing)}); "
                "run .ci/setup_system.sh as root (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd launches jobs and munged owns its key)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def _node_hardware() -> dict[str, int]:
    """CPUs and memory as slurmd itself detects them, so the node never claims more than it has."""
    cpus = len(os.sched_getaffinity(0))
    facts = {"CPUs": cpus, "RealMemory": 1024}
    try:
        out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return facts
    for word in out.split():
        key, _, value = word.partition("=")
        if key in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory"):
            facts[key] = int(value)
    # Keep a margin on memory: slurmd drains a node whose configured memory exceeds what it sees.
    facts["RealMemory"] = max(1, int(facts["RealMemory"] * 0.9))
    return facts


class SlurmCluster:
    """munged + slurmctld + slurmd for this host at 127.0.0.1, all files under ``root``."""

    def __init__(self, root: str | os.PathLike, partition: str = "debug") -> None:
        self.root = Path(root).resolve()
        self.partition = partition
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.hardware: dict[str, int] = {}
        self._started: list[str] = []

    # -- environment for client commands -------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF pointing at this cluster (give it to sbatch/squeue/scontrol)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        for key in [k for k in env if k.startswith(("SLURM_JOB", "SLURM_STEP", "SBATCH_"))]:
            del env[key]  # a test run inside a Slurm job must not leak that job's settings
        return env

    @property
    def cpus(self) -> int:
        """CPUs of the one node (never ask a job for more: it would pend forever)."""
        return self.hardware.get("CPUs") or len(os.sched_getaffinity(0))

    def _path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def _write_config(self) -> None:
        for sub in ("state", "spool", "log", "munge", "run"):
            self._path(sub).mkdir(parents=True, exist_ok=True)
        self._path("munge").chmod(0o700)
        key = self._path("munge", "munge.key")
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self.hardware = _node_hardware()
        node_facts = " ".join(f"{k}={v}" for k, v in self.hardware.items())
        ctld_port, slurmd_port = _free_port(), _free_port()
        lines = [
            "ClusterName=wxtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmUser={_user_name()}",
            f"SlurmdUser={_user_name()}",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self._path('munge', 'munge.socket')}",
            f"StateSaveLocation={self._path('state')}",
            f"SlurmdSpoolDir={self._path('spool')}",
            f"SlurmctldPidFile={self._path('run', 'slurmctld.pid')}",
            f"SlurmdPidFile={self._path('run', 'slurmd.pid')}",
            f"SlurmctldLogFile={self._path('log', 'slurmctld.log')}",
            f"SlurmdLogFile={self._path('log', 'slurmd.log')}",
            # No cgroups in a container: track job processes through /proc, bind no tasks to cores.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=600",  # keep finished jobs visible to `scontrol show job` long enough to check
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=5",
            f"NodeName={self.node} NodeAddr=127.0.0.1 {node_facts} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.conf)

    def running(self) -> bool:
        """All three daemons this cluster started are alive."""
        return all(_alive(self._pid_file(d)) for d in DAEMONS)

    def _pid_file(self, daemon: str) -> Path:
        return self._path("run", f"{daemon}.pid")

    def _run(self, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, timeout: float = 90) -> SlurmCluster:
        """Start munged, slurmctld and slurmd (if not already up) and wait until the node is idle."""
        if self.running():
            return self
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.stop()  # leftovers of a half-started cluster in the same folder
        self._write_config()
        munge_dir = self._path("munge")
        self._check(self._run([
            _which("munged") or "munged", "--force",
            f"--socket={munge_dir / 'munge.socket'}", f"--key-file={munge_dir / 'munge.key'}",
            f"--pid-file={self._pid_file('munged')}", f"--log-file={self._path('log', 'munged.log')}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ]), "munged")
        conf = str(self.conf)
        self._check(self._run([_which("slurmctld") or "slurmctld", "-c", "-f", conf]), "slurmctld")
        self._check(self._run([_which("slurmd") or "slurmd", "-f", conf, "-N", self.node]), "slurmd")
        self._started = list(DAEMONS)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = self._run(["sinfo", "-h", "-N", "-o", "%t"])
            state = out.stdout.strip()
            if state in ("idle", "mix", "alloc"):
                return self
            if state.startswith(("drain", "down", "inval")) and _alive(self._pid_file("slurmd")):
                # A node registered with a problem: say why rather than time out.
                self._run(["scontrol", "update", f"NodeName={self.node}", "State=RESUME"])
            time.sleep(0.5)
        logs = self.logs()
        self.stop()
        raise RuntimeError(f"local Slurm node not idle after {timeout:.0f} s (state {state!r}):\n{logs}")

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"{what} failed to start ({result.returncode}): {result.stderr}\n{logs}")

    def logs(self, tail: int = 30) -> str:
        """The last lines of each daemon's log, to explain a failure."""
        parts = []
        for log in sorted(self._path("log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self, timeout: float = 20) -> None:
        """Shut the daemons down (no-op when none runs): scontrol shutdown, then SIGTERM by pid file."""
        if _alive(self._pid_file("slurmctld")) and self.conf.exists():
            self._run(["scontrol", "shutdown"], timeout=timeout)
        for daemon in ("slurmd", "slurmctld", "munged"):
            pid_file = self._pid_file(daemon)
            deadline = time.monotonic() + timeout
            while (pid := _alive(pid_file)) and time.monotonic() < deadline:
                if daemon == "munged" or time.monotonic() > deadline - timeout / 2:
                    os.kill(pid, signal.SIGTERM)
                time.sleep(0.2)
            if (pid := _alive(pid_file)) is not None:
                os.kill(pid, signal.SIGKILL)
        self._started = []

    # -- jobs ----------------------------------------------------------------------------------------
    def sbatch(self, script: str | os.PathLike, *args: str, cwd: str | os.PathLike | None = None) -> str:
        """Submit a script file; returns the job id."""
        result = subprocess.run(["sbatch", "--parsable", *args, str(script)], env=self.env, cwd=cwd,
                                capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed: {result.stderr}")
        return result.stdout.strip().split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, StdOut, ...); empty once Slurm forgot it."""
        out = self._run(["scontrol", "show", "job", "-o", str(job_id)])
        info: dict[str, str] = {}
        for word in out.stdout.split():
            key, sep, value = word.partition("=")
            if sep:
                info[key] = value
        return info

    def wait(self, job_id: str, timeout: float = 300) -> dict[str, str]:
        """Wait until the job ends; returns its final `scontrol show job` fields."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                        "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"):
                return info
            time.sleep(0.5)
        self._run(["scancel", str(job_id)])
        raise TimeoutError(f"job {job_id} still {info.get('JobState')!r} after {timeout:.0f} s "
                           f"(reason {info.get('Reason')!r}):\n{self.logs()}")

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
