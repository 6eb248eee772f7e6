"""Where Ray Serve's latency goes, and what it costs against plain uvicorn (issue 16, item 7).

    .venv/bin/python benchmarks/serve_latency.py [--rate 100 --seconds 10]

The same open-loop load (``benchmarks/serve_load.py``'s client, 127.0.0.1,
bounded) at ``--rate`` requests/s against:

- uvicorn: the recemb app (``recemb serve``), its ``/healthz`` and its
  retrieval mix (half ``/v1/similar``, half ``/v1/recommend``, k = 10);
- Ray Serve, for each Serve mode below, in a fresh Ray of its own:
  ``floor``  a do-nothing deployment answering a constant (Serve's proxy and
  replica hop alone), ``healthz`` the recemb app's ``/healthz`` (plus
  FastAPI's ASGI bridge in the replica), ``mix`` the retrieval mix.

For the Serve mix, Serve's request logs give each request's time in the
replica (from arrival to the last response message) and in the proxy (the
whole request as the proxy sees it): the difference is the hop, the
proxy's own work and the queueing between them.

Serve modes (environment set before Ray starts, so every Serve process sees it):

- ``default``: Ray's defaults.
- ``same-loop``: ``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``,
  ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0``: user code and the router on
  the replica's/proxy's main event loop (no cross-thread hand-offs).
- ``throughput-optimized``: ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Ray >= 2.56:
  same loops, buffered request logs, gRPC between proxy and replicas, and
  direct ingress: each ingress replica also serves HTTP on a port of its own,
  30000-31000 on the ``http_options`` host, measured too as "replica's own port").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_load import local_port, requests_mix, run_load, wait_ready  # noqa: E402
from serving.testing import make_demo_run  # noqa: E402

MODES = {
    "default": {},
    "same-loop": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
    "throughput-optimized": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
_LOG_LINE = re.compile(r"^\w+ (\S+ \S+) .* -- (GET|POST) (\S+) (\d+) ([\d.]+)ms")


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def ok(body: bytes) -> bool:
    return bool(body)


def bench_uvicorn(run: Path, args, mix: list[bytes]) -> list[dict]:
    port = local_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.uvicorn_main", "--run-dir", str(run), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        run_load(port, mix[:500], None, 1.0, 4)  # warm-up
        health = run_load(port, [get("/healthz")] * len(mix), args.rate, args.seconds, args.conns, check=ok)
        retrieval = run_load(port, mix, args.rate, args.seconds, args.conns)
    finally:
        proc.terminate()
        proc.wait(10)
    return [{"mode": "uvicorn", "what": "healthz", **health}, {"mode": "uvicorn", "what": "mix", **retrieval}]


def split_from_logs(logs: Path, start: float, end: float) -> dict:
    """Per-request replica and proxy times of the retrieval requests logged between ``start`` and ``end``."""

    def read(pattern: str) -> dict[str, float]:
        out = {}
        for f in logs.glob(pattern):
            for line in f.read_text().splitlines():
                m = _LOG_LINE.match(line)
                if not m or not m.group(3).startswith("/v1/"):
                    continue
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                rid = line.split(" -- ")[0].split()[-1]
                if start <= t <= end:
                    out[rid] = float(m.group(5))
        return out

    proxy, replica = read("proxy_*.log"), read("replica_*RecembService*.log")
    ids = [i for i in proxy if i in replica]
    if len(ids) < 50:  # buffered request logs not flushed: no split
        return {}
    p, r = np.array([proxy[i] for i in ids]), np.array([replica[i] for i in ids])
    return {
        "requests": len(ids),
        **{f"replica_p{q}": float(np.percentile(r, q)) for q in (50, 99)},
        **{f"proxy_p{q}": float(np.percentile(p, q)) for q in (50, 99)},
        **{f"hop_p{q}": float(np.percentile(p - r, q)) for q in (50, 99)},
    }


def direct_port(logs: Path, app: str, seconds: float = 30) -> int | None:
    """The HTTP port an ingress replica of ``app`` serves on by itself (direct ingress), from its log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for f in logs.glob(f"replica_{app}_*.log"):
            m = re.search(r"Started HTTP server on port (\d+)", f.read_text())
            if m:
                return int(m.group(1))
        time.sleep(0.5)
    return None


def child(args) -> None:
    """One Serve mode in a fresh Ray: floor, healthz, mix; prints one JSON line."""
    import ray
    from ray import serve
    from starlette.responses import PlainTextResponse

    from recemb.retrieval.serve_config import ServeConfig
    from serving.serve_app import RecembService, deployment_options

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
    class Floor:
        async def __call__(self, request) -> PlainTextResponse:
            return PlainTextResponse("ok")

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    port = local_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    direct = os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"  # replicas also listen on their own port
    rows = []
    try:
        serve.run(Floor.bind(), name="floor", route_prefix="/floor")
        run_load(port, [get("/floor")] * 500, None, 1.0, 4, check=ok)
        floor = run_load(port, [get("/floor")] * 100_000, args.rate, args.seconds, args.conns, check=ok)
        rows.append({"what": "floor", **floor})
        own = direct_port(logs, "floor") if direct else None
        if own:
            floor = run_load(own, [get("/floor")] * 100_000, args.rate, args.seconds, args.conns, check=ok)
            rows.append({"what": "floor, replica's own port", **floor})
        serve.delete("floor")
        settings = ServeConfig(run_dir=args.run, port=port, num_cpus=0.5, app_name="recemb_bench")
        deployment = RecembService.options(**deployment_options(settings))  # type: ignore[attr-defined]
        serve.run(deployment.bind(settings.model_dump(mode="json")), name="recemb_bench", route_prefix="/")
        mix = requests_mix(args.items, 100_000)
        run_load(port, mix[:500], None, 1.0, 4)
        health = run_load(port, [get("/healthz")] * 100_000, args.rate, args.seconds, args.conns, check=ok)
        rows.append({"what": "healthz", **health})
        began = time.time()
        rows.append({"what": "mix", **run_load(port, mix, args.rate, args.seconds, args.conns)})
        ended = time.time()
        own = direct_port(logs, "recemb_bench") if direct else None
        if own:
            rows.append({"what": "mix, replica's own port", **run_load(own, mix, args.rate, args.seconds, args.conns)})
    finally:
        serve.shutdown()
        ray.shutdown()
    next(r for r in rows if r["what"] == "mix")["split"] = split_from_logs(logs, began, ended)
    print("ROWS " + json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        run = make_demo_run(Path(tmp) / "run", n_items=args.items, dim=64, n_trees=20)
        results += bench_uvicorn(run, args, requests_mix(args.items, 100_000))
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", "--run", str(run)]
            cmd += ["--items", str(args.items), "--rate", str(args.rate), "--seconds", str(args.seconds)]
            env = {**os.environ, **MODES[mode], "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
            out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("ROWS ")), None)
            if line is None:
                print(f"{mode}: failed\n{out.stderr[-3000:]}")
                continue
            results += [{"mode": f"serve {mode}", **r} for r in json.loads(line[5:])]
    print(f"\n{args.items} items x 64, Annoy 20 trees, k = 10, {args.rate:.0f} rps open loop, {args.seconds:.0f} s")
    print(f"a run, {args.conns} connections, {os.cpu_count()} cores shared by client and server")
    print(f"| {'mode':<27} | {'endpoint':<26} | {'rps':>5} | {'p50 ms':>6} | {'p99 ms':>6} | failed |")
    print("|" + "|".join("-" * w for w in (29, 28, 7, 8, 8, 8)) + "|")
    for r in results:
        print(
            f"| {r['mode']:<27} | {r['what']:<26} | {r['rps']:>5.0f} | {r['p50']:>6.2f} | {r['p99']:>6.2f} | "
            f"{r['failed']:>6} |"
        )
    print("\nServe mix, per request from Serve's logs (ms, p50 / p99):")
    print("| mode | replica | proxy (whole request) | proxy - replica (hop, proxy work, queue) |")
    print("|---|---|---|---|")
    for r in results:
        sp = r.get("split")
        if sp:
            print(
                f"| {r['mode']} | {sp['replica_p50']:.2f} / {sp['replica_p99']:.2f} | {sp['proxy_p50']:.2f} / "
                f"{sp['proxy_p99']:.2f} | {sp['hop_p50']:.2f} / {sp['hop_p99']:.2f} |"
            )
        elif "split" in r:
            print(f"| {r['mode']} | (request logs buffered: no split) | | |")


if __name__ == "__main__":
    main()
