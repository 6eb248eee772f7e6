"""Jobs on a real local Ray cluster (issue #9 items 2 and 3): ``ray job submit`` end to end, worker loss.

A Ray head is started on 127.0.0.1 in a temp dir (recemb.testing.ray_cluster),
stages are submitted with the ``ray job`` CLI exactly as a user would
(``--working-dir`` = this checkout, with excludes), and the cluster is
stopped by the pids it started. Data: a tiny synthetic corpus made with
``recemb data synth`` (8 topics); quality = the share of an item's 5
nearest neighbours in its own topic (chance ~1/8).

The two cluster tests are ``slow`` (a cluster start is ~10 s, each job ~5-20 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from recemb.config import load_config
from recemb.embeddings import EmbeddingSet
from recemb.testing.ray_cluster import _descendants, cluster_env, local_ray_cluster, submit_job, wait_job
from recemb.train.checkpoints import latest_checkpoint
from recemb.train.item2vec import train_item2vec
from recemb.train.ray_config import RayTrainConfig

REPO = Path(__file__).resolve().parents[1]
TOPICS = 8
JOB_TIMEOUT_S = 150
# Single-threaded (deterministic) numba kernel; dim/negatives make an epoch long
# enough (~0.1-0.3 s) that the fault test's kill lands mid-training.
I2V = {"dim": 32, "window": 5, "negatives": 10, "threads": 1, "seed": 0}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_ray_cluster(tmp_path_factory.mktemp("cluster"), num_cpus=2) as info:
        yield info


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Canonical tables made the way a user would: ``recemb data synth``."""
    out = tmp_path_factory.mktemp("synth") / "data"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "recemb"),
            "data",
            "synth",
            "--out",
            str(out),
            "--users",
            "500",
            "--items",
            "300",
            "--events",
            "100000",
            "--topics",
            str(TOPICS),
            "--impressions",
            "0",
            "--no-images",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def write_config(path: Path, data: Path, run_dir: Path, name: str, **sections) -> Path:
    """A pipeline YAML with absolute paths (the job's cwd is the unpacked working dir)."""
    tree = {
        "run": {"name": name, "dir": str(run_dir)},
        "data": {"prepared": str(data)},
        "item2vec": {**I2V, "epochs": 3},
        "ray": {"workers": 1, "cpus_per_worker": 1, "max_failures": 1},
        "export": {"n_trees": 10, "sample": 100},
        "candidates": {"k": 10, "partitions": 2, "num_workers": 1, "holdout": "ml"},
        **sections,
    }
    path.write_text(yaml.safe_dump(tree))
    return path


def run_job(cluster, sid: str, *entrypoint: str) -> str:
    """Submit from the checkout, wait, and return the logs; fail with the logs unless SUCCEEDED."""
    t0 = time.perf_counter()
    submit_job(cluster, list(entrypoint), REPO, sid)
    status, logs = wait_job(cluster, sid, timeout_s=JOB_TIMEOUT_S)
    print(f"job {sid}: {status} in {time.perf_counter() - t0:.1f}s")
    assert status == "SUCCEEDED", f"job {sid} {status}:\n{logs[-4000:]}"
    return logs


def topic_rate(emb: EmbeddingSet, data: Path, k: int = 5) -> float:
    """Share of each item's k nearest neighbours (cosine) in its own topic."""
    items = pl.read_parquet(data / "items.parquet").select("item_id", "topic")
    topic = dict(zip(items["item_id"].to_list(), items["topic"].to_list()))
    t = np.array([topic[i] for i in emb.ids])
    unit = emb.vectors / np.linalg.norm(emb.vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    return float((t[top] == t[:, None]).mean())


def test_cluster_env_and_process_tree_without_ray():
    """Fast: the head's environment, and the /proc walk that shutdown relies on."""
    env = cluster_env({"PATH": "/usr/bin", "RAY_ADDRESS": "10.0.0.1:6379"})
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and env["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_ADDRESS" not in env  # a stray address would send the clients elsewhere
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    # a grandchild is found through its parent
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while not _descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = _descendants(parent.pid)
        assert len(kids) == 1 and Path(f"/proc/{kids[0]}/cmdline").read_bytes().startswith(b"sleep")
    finally:
        for pid in _descendants(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)


# Printed by a one-line job: the interpreter, and what the working-dir upload holds.
PROBE = (
    "import os, sys, json; files = [os.path.join(d, f) for d, _, fs in os.walk('.') for f in fs]; "
    "print('PROBE', json.dumps({'python': sys.executable, 'top': sorted(os.listdir('.')), "
    "'files': len(files), 'bytes': sum(os.path.getsize(f) for f in files)}))"
)


@pytest.mark.slow
def test_jobs_run_train_export_and_candidates_on_a_local_cluster(cluster, data, tmp_path):
    # The job's `python` is this venv's, and the upload is the code only.
    logs = run_job(cluster, "probe", "python", "-c", PROBE)
    probe = json.loads(logs.split("PROBE ", 1)[1].splitlines()[0])
    assert Path(probe["python"]).parent == Path(sys.executable).parent, probe["python"]
    assert {"jobs", "recemb", "configs"} <= set(probe["top"])
    assert not {".venv", ".git", "runs"} & set(probe["top"]), probe["top"]
    assert probe["bytes"] < 10 * 1024**2, probe  # measured ~2 MB; a stray dataset or venv is far more
    print(f"working-dir upload: {probe['files']} files, {probe['bytes'] / 1024**2:.2f} MiB")

    cfg_path = write_config(tmp_path / "cluster.yaml", data, tmp_path / "runs", "c")
    cfg = load_config(cfg_path)
    run_job(cluster, "train", "python", "-m", "jobs.train_item2vec", "--config", str(cfg_path))
    emb = EmbeddingSet.load(cfg.run_dir / "item2vec" / "embeddings")
    assert emb.kind == "item2vec" and emb.dim == 32 and len(emb) == 300
    metrics = json.loads((cfg.run_dir / "item2vec" / "metrics.json").read_text())
    assert metrics["workers"] == 1 and [h["epoch"] for h in metrics["epochs"]] == [1, 2, 3]
    assert latest_checkpoint(cfg.run_dir / "ray" / "item2vec").name == "checkpoint_epoch_0003"

    # The HNSW backend here (Annoy is covered everywhere else): the candidate job below searches it.
    run_job(
        cluster,
        "export",
        "python",
        "-m",
        "jobs.export_index",
        "--config",
        str(cfg_path),
        "--set",
        "export.backend=hnsw",
    )
    manifest = json.loads((cfg.run_dir / "index" / "item2vec" / "manifest.json").read_text())
    assert manifest["kind"] == "hnsw" and manifest["count"] == 300 and manifest["dim"] == 32
    covisit = json.loads((cfg.run_dir / "index" / "covisit" / "manifest.json").read_text())
    assert covisit["kind"] == "covisit" and covisit["count"] >= 290  # items with an event

    run_job(cluster, "candidates", "python", "-m", "jobs.generate_candidates", "--config", str(cfg_path))
    out = cfg.run_dir / "candidates"
    assert (out / "_SUCCESS").exists()
    parts = sorted(out.glob("part-*.parquet"))
    assert parts
    schema = pq.read_schema(parts[0])
    assert {f.name: str(f.type) for f in schema} == {
        "user_id": "string",
        "rank": "int32",
        "item_id": "string",
        "score": "float",
        "source": "string",
    }
    table = pl.concat([pl.read_parquet(p) for p in parts])
    written = json.loads((out / "manifest.json").read_text())
    # users with a P-ML train part (a user needs 3 events); every one of them gets a list
    assert 450 <= written["users"] <= 500 and table["user_id"].n_unique() == written["users"]
    assert table.group_by("user_id").len()["len"].max() <= 10 and table["rank"].min() == 1
    # every exported source (the index and the co-visitation table) is blended in
    assert written["sources"] == ["covisit", "item2vec"] and {"covisit", "item2vec"} <= set(table["source"])


def _train_worker_pids(cluster) -> list[int]:
    # Ray sets a worker's process title to its actor: "ray::RayTrainWorker.<method>".
    return [pid for pid, cmd in cluster.cluster_processes().items() if cmd.startswith("ray::RayTrainWorker")]


def _registered_epoch(experiment: Path) -> int:
    """Epoch of the newest checkpoint Ray Train's controller has registered (its snapshot file), or 0."""
    try:
        snap = json.loads((experiment / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being rewritten
        return 0
    latest = snap.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch", 0))


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint_and_matches_uninterrupted_run(cluster, data, tmp_path):
    epochs = 20
    cfg_path = write_config(
        tmp_path / "fault.yaml",
        data,
        tmp_path / "runs",
        "fault",
        item2vec={**I2V, "epochs": epochs},
    )
    cfg = load_config(cfg_path)
    experiment = cfg.run_dir / "ray" / "item2vec"
    submit_job(cluster, ["python", "-m", "jobs.train_item2vec", "--config", str(cfg_path)], REPO, "fault")

    # SIGKILL the training worker (a lost process, not an exception) once Ray Train has registered
    # epoch 2's checkpoint: a checkpoint only on storage is not yet one Ray resumes from.
    deadline, killed = time.monotonic() + JOB_TIMEOUT_S, None
    while killed is None and time.monotonic() < deadline:
        registered = _registered_epoch(experiment)
        if registered >= 2:
            pids = _train_worker_pids(cluster)
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
            killed = (pids[0], registered)
        time.sleep(0.05)
    assert killed is not None, "Ray Train never registered the job's second checkpoint"
    assert killed[1] < epochs, f"the kill came after the last epoch: {killed}"

    status, logs = wait_job(cluster, "fault", timeout_s=JOB_TIMEOUT_S)
    assert status == "SUCCEEDED", f"job fault {status}:\n{logs[-4000:]}"
    history = json.loads((cfg.run_dir / "item2vec" / "metrics.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    resumed_at = {h["started_at_epoch"] for h in history} - {0}
    # Resumed exactly once, from the checkpoint registered at the kill (or a later one whose
    # report was already on its way to the controller), not from scratch.
    assert len(resumed_at) == 1 and min(resumed_at) >= killed[1], (killed, resumed_at)

    # The same config uninterrupted (in this process: same kernel, same per-epoch seeds).
    clean_cfg = load_config(
        write_config(
            tmp_path / "clean.yaml",
            data,
            tmp_path / "runs",
            "clean",
            item2vec={**I2V, "epochs": epochs},
        )
    )
    clean_out = train_item2vec(clean_cfg.item2vec, RayTrainConfig(workers=0), clean_cfg.prepared_dir, clean_cfg.run_dir)
    clean = EmbeddingSet.load(clean_out / "embeddings")
    faulty = EmbeddingSet.load(cfg.run_dir / "item2vec" / "embeddings")
    assert faulty.ids.tolist() == clean.ids.tolist()
    r_clean, r_faulty = topic_rate(clean, data), topic_rate(faulty, data)
    loss_clean = json.loads((clean_cfg.run_dir / "item2vec" / "metrics.json").read_text())["epochs"][-1]["loss"]
    loss_faulty = history[-1]["loss"]
    diff = float(np.abs(clean.vectors - faulty.vectors).max())
    print(
        f"killed {killed}, resumed at epoch {resumed_at}; topic rate clean {r_clean:.4f} faulty {r_faulty:.4f}; "
        f"last-epoch loss clean {loss_clean:.5f} faulty {loss_faulty:.5f}; max |dv| {diff:.2e}"
    )
    assert r_clean > 3 / TOPICS and abs(r_clean - r_faulty) < 0.05, (r_clean, r_faulty)
    assert loss_faulty == pytest.approx(loss_clean, rel=0.02), (loss_clean, loss_faulty)
    # Stronger than "within noise": one thread, per-epoch seeds and the exact restored tables make
    # the resumed run the same run (measured: max |dv| = 0). Multi-threaded Hogwild would not be.
    np.testing.assert_array_equal(faulty.vectors, clean.vectors)
