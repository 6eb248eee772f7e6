"""A real single-node Ray cluster for tests: ``ray start --head --block`` in a temp dir, jobs via the CLI.

    with local_ray_cluster(tmp_path, num_cpus=2) as cluster:
        sid = submit_job(cluster, ["python", "-m", "jobs.train_item2vec", "--config", str(cfg)])
        status, logs = wait_job(cluster, sid, timeout_s=120)

Why ``--block`` in a subprocess we own: every process of the cluster (GCS,
raylet, dashboard, agents, workers, job drivers) is then a descendant of
that one process, so shutting down stops exactly what this cluster started
and nothing else on the machine. ``ray stop`` is never used: it kills every
Ray process on the machine by name, other people's included.

Everything binds 127.0.0.1 on ports picked free at start (other clusters
may hold Ray's defaults, e.g. the dashboard agent's 52365). Linux only: the
process tree is read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recemb.errors import RecembError

# Never shipped to the cluster: environments, run outputs, prepared data, caches.
DEFAULT_EXCLUDES = (
    ".venv",
    ".git",
    "runs",
    "datasets/*/",
    "**/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "build",
    "dist",
)
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class ClusterInfo:
    """A running local cluster: where to reach it and the processes it owns."""

    address: str  # dashboard / job API, http://127.0.0.1:<port>
    gcs_address: str  # 127.0.0.1:<port>, for ray.init(address=...)
    temp_dir: Path  # Ray's --temp-dir (logs under session_latest/logs)
    head_pid: int  # the `ray start --block` process
    env: dict[str, str]  # environment for CLI clients of this cluster (ray job ...)
    pids: list[int] = field(default_factory=list)  # every live process of the cluster, refreshed by pids_now()
    # (pid, start time) of every process ever seen in the cluster: shutdown also reaches
    # processes orphaned by a dead parent, and never a later process that reuses a pid.
    seen: dict[int, int] = field(default_factory=dict)

    def pids_now(self) -> list[int]:
        """Pids of the head process and all its descendants at this moment, plus any process
        whose command line names this cluster's temp dir (an orphan left by a crashed parent)."""
        tree = [self.head_pid, *_descendants(self.head_pid)]
        self.pids = sorted(set(tree) | set(_naming(str(self.temp_dir))))
        for pid in self.pids:
            st = _stat(pid)
            if st is not None:
                self.seen.setdefault(pid, st[1])
        return self.pids

    def cluster_processes(self) -> dict[int, str]:
        """``{pid: command line}`` of the cluster's processes (worker titles look like ``ray::RayTrainWorker...``)."""
        return {pid: _cmdline(pid) for pid in self.pids_now()}


# ----------------------------------------------------------------- /proc helpers
def _stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, start time in clock ticks)`` of a live process, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    if fields[0] == "Z":  # a zombie is dead; only its parent's wait() is missing
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _naming(text: str) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and text in _cmdline(int(e))]


def _alive(pid: int, start: int) -> bool:
    """Still the same live process (a reused pid has another start time)."""
    st = _stat(pid)
    return st is not None and st[1] == start


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ----------------------------------------------------------------- the cluster
def cluster_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the head and its CLI clients: 127.0.0.1 binding, no usage stats, no token auth,
    and this interpreter's bin/ first on PATH so ``python`` in a job is this venv's."""
    env = dict(os.environ if base is None else base)
    env.pop("RAY_ADDRESS", None)  # the clients get the address explicitly
    env.update(
        {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else Ray binds the external interface
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",  # token auth is on by default in 2.60; off for a private test cluster
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    return env


def _ray_cli() -> str:
    """The ``ray`` script beside this interpreter (the venv's), so the cluster runs the venv's Python."""
    cli = Path(sys.executable).parent / "ray"
    if not cli.exists():
        raise RecembError(f"no `ray` CLI beside {sys.executable}; install ray[serve] into this environment")
    return str(cli)


@contextlib.contextmanager
def local_ray_cluster(
    tmp_dir: Path,
    num_cpus: int = 2,
    object_store_mb: int = 256,
    start_timeout_s: float = 90.0,
) -> Iterator[ClusterInfo]:
    """Start a Ray head on 127.0.0.1 with the job API, yield its :class:`ClusterInfo`, stop exactly it.

    Args:
        tmp_dir: where the head's console log goes (``ray-head.log``). Ray's own
            ``--temp-dir`` is a short fresh directory under the system temp dir,
            because Ray's unix socket paths must stay under ~107 characters;
            it is deleted at exit unless ``RECEMB_KEEP_RAY_TMP=1``.
        num_cpus: CPUs the head advertises.
        object_store_mb: plasma store size.
        start_timeout_s: how long to wait for the job API.

    Raises:
        RecembError: the head did not come up (the message holds its log tail),
            or a process of the cluster survived shutdown.
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    ray_tmp = Path(tempfile.mkdtemp(prefix="recemb-ray-"))
    (gcs, dash, client, agent_listen, agent_grpc, env_agent, metrics, node_mgr, obj_mgr) = _free_ports(9)
    cmd = [
        _ray_cli(),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_listen}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}",
        f"--temp-dir={ray_tmp}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--object-store-memory={object_store_mb * 1024**2}",
    ]
    env = cluster_env()
    log_path = tmp_dir / "ray-head.log"
    with open(log_path, "wb") as log:
        # A new session: a Ctrl-C in the test terminal must not reach the cluster half-way.
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    info = ClusterInfo(
        address=f"http://127.0.0.1:{dash}",
        gcs_address=f"127.0.0.1:{gcs}",
        temp_dir=ray_tmp,
        head_pid=head.pid,
        env={**env, "RAY_ADDRESS": f"http://127.0.0.1:{dash}"},
    )
    try:
        _wait_ready(info, head, log_path, start_timeout_s)
        info.pids_now()
        yield info
    finally:
        try:
            _shutdown(info, head)
        finally:
            if os.environ.get("RECEMB_KEEP_RAY_TMP") != "1":
                shutil.rmtree(ray_tmp, ignore_errors=True)


def _wait_ready(info: ClusterInfo, head: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Until the job API lists jobs (the dashboard is up and its job module loaded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RecembError(f"ray start exited with {head.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{info.address}/api/jobs/", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RecembError(f"the Ray job API at {info.address} did not answer in {timeout_s:.0f}s:\n{_tail(log_path)}")


def _shutdown(info: ClusterInfo, head: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the head (Ray tears its node down), then terminate/kill whatever of its tree is left."""
    info.pids_now()
    procs = dict(info.seen)
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=grace_s)
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        left = [p for p, start in procs.items() if _alive(p, start)]
        if not left:
            break
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in procs.items()):
            time.sleep(0.1)
    if head.poll() is None:
        head.kill()
    head.wait(timeout=5)
    survivors = {p: _cmdline(p) for p, start in procs.items() if _alive(p, start)}
    if survivors:
        raise RecembError(f"processes of the test cluster survived shutdown: {survivors}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------- jobs through the CLI
def _ray_job(info: ClusterInfo, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    cmd = [_ray_cli(), "job", *args]
    return subprocess.run(cmd, env=info.env, capture_output=True, text=True, timeout=timeout_s)


def submit_job(
    info: ClusterInfo,
    entrypoint: Sequence[str],
    working_dir: Path,
    submission_id: str,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    env_vars: dict[str, str] | None = None,
    retries: int = 5,
) -> str:
    """``ray job submit --no-wait --working-dir <dir> --runtime-env-json {excludes} -- <entrypoint>``.

    Retried a few times: the dashboard answers before its agent on the head is
    ready to take jobs. Returns the submission id.
    """
    runtime_env: dict = {"excludes": list(excludes)}
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    args = [
        "submit",
        "--address",
        info.address,
        "--submission-id",
        submission_id,
        "--no-wait",
        "--working-dir",
        str(working_dir),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        *entrypoint,
    ]
    if retries < 1:
        raise RecembError(f"submit_job: retries must be at least 1, got {retries}")
    out: subprocess.CompletedProcess | None = None
    for _ in range(retries):
        out = _ray_job(info, *args)
        if out.returncode == 0:
            return submission_id
        if "already exists" in out.stdout + out.stderr:  # an earlier try got through
            return submission_id
        time.sleep(2.0)
    assert out is not None  # retries >= 1: the loop ran
    raise RecembError(f"ray job submit failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def job_status(info: ClusterInfo, submission_id: str) -> str:
    """``ray job status``: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    out = _ray_job(info, "status", "--address", info.address, "--log-color", "false", submission_id, timeout_s=60)
    text = out.stdout + out.stderr
    # Running jobs print "Status for job 'id': RUNNING"; finished ones "Job 'id' succeeded".
    m = re.search(r"Status for job '[^']+': (\w+)", text) or re.search(r"Job '[^']+' (succeeded|failed|stopped)", text)
    if m is None:
        raise RecembError(f"cannot read the status of job {submission_id}:\n{text}")
    return m.group(1).upper()


def job_logs(info: ClusterInfo, submission_id: str) -> str:
    """``ray job logs``: the driver's stdout and stderr so far."""
    return _ray_job(info, "logs", "--address", info.address, "--log-color", "false", submission_id, timeout_s=60).stdout


def wait_job(info: ClusterInfo, submission_id: str, timeout_s: float = 180.0, poll_s: float = 1.0) -> tuple[str, str]:
    """Poll until the job reaches a terminal state; ``(status, logs)``. A job still running at the
    deadline is stopped (``ray job stop``) and reported as ``TIMEOUT``."""
    deadline = time.monotonic() + timeout_s
    status = "PENDING"
    while time.monotonic() < deadline:
        status = job_status(info, submission_id)
        if status in TERMINAL_STATES:
            return status, job_logs(info, submission_id)
        time.sleep(poll_s)
    _ray_job(info, "stop", "--address", info.address, "--no-wait", submission_id, timeout_s=60)
    return "TIMEOUT", job_logs(info, submission_id)
