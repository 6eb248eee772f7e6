"""Load test of the retrieval service: plain uvicorn vs Ray Serve on the same index, with and without a swap.

    .venv/bin/python benchmarks/serve_load.py [--items 10000 --dim 64 --rate 500 --seconds 10]

Bounded: every run stops after ``--seconds`` or ``--max-requests``, all
traffic goes to 127.0.0.1. The client is open-loop (request i is due at
``i / rate``; latency counts from that due time, so a stalled server cannot
hide its queue) over ``--conns`` keep-alive connections with raw asyncio
streams (~30 us of client CPU per request: the client shares the 2 cores).
Half the requests are ``GET /v1/similar/{id}``, half ``POST /v1/recommend``
with ``--history`` recent items (5); k = 10. ``--covisit`` adds a co-visitation
source (of the demo's clicks) that the service fuses with the index. ``--tower sequence`` serves the
recommend requests through a sequence-model user tower (untrained weights,
the real network: ``serve.user_tower.model=sequence``), micro-batched::

    .venv/bin/python benchmarks/serve_load.py --tower sequence --history 50 --rate 200 --skip-serve

``--direct`` (with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` in the environment) sends the
Serve runs to the replica's own port (direct ingress) instead of the proxy::

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 .venv/bin/python benchmarks/serve_load.py --skip-uvicorn --direct

"max" runs are closed-loop (each connection
sends as soon as its answer arrives) and measure throughput.

Swap runs re-export the index (new vectors, same ids) half-way and swap it
in: uvicorn through ``POST /v1/admin/reload``, Serve through a new
``user_config`` (reconfigure in place). A failure = a non-200 answer, a
short list, or a connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recemb.embeddings import EmbeddingSet  # noqa: E402
from recemb.index.export import export_all  # noqa: E402
from recemb.retrieval.serve_config import ServeConfig  # noqa: E402
from serving.testing import clustered_vectors, make_demo_run  # noqa: E402

TOKEN = "bench-token"


def requests_mix(n_items: int, n: int, seed: int = 0, history: int = 5) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n):
        if r % 2:
            out.append(f"GET /v1/similar/i{rng.integers(n_items)}?k=10 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        else:
            body = json.dumps({"items": [f"i{x}" for x in rng.integers(0, n_items, history)], "k": 10}).encode()
            out.append(
                b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
    return out


async def _read_response(reader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, await reader.readexactly(length)


def ten_items(body: bytes) -> bool:
    """A retrieval answer's check: k = 10 items."""
    return len(json.loads(body)["items"]) == 10


async def load(port: int, reqs: list[bytes], rate: float | None, seconds: float, conns: int, check=ten_items) -> dict:
    """Send ``reqs`` (open loop at ``rate``/s, or closed loop if None) for at most ``seconds``;
    an answer counts when its status is 200 and ``check(body)`` holds."""
    lat, fails = [], []
    t0 = time.perf_counter() + 0.05
    nxt = iter(range(len(reqs)))
    stop = t0 + seconds

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in nxt:
                due = t0 + i / rate if rate else time.perf_counter()
                if due > stop:
                    return
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    writer.write(reqs[i])
                    status, body = await _read_response(reader)
                    done = time.perf_counter()
                    if status != 200 or not check(body):
                        fails.append(status)
                    else:
                        lat.append(done - due)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    fails.append(repr(e))
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(conns)])
    wall = time.perf_counter() - began
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {
        "sent": len(lat) + len(fails),
        "failed": len(fails),
        "rps": len(lat) / wall,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
    }


def run_load(port, reqs, rate, seconds, conns, swap=None, check=ten_items) -> dict:
    """``load`` in this thread; ``swap()`` runs on another thread half-way through."""
    t = None
    if swap is not None:
        t = threading.Timer(seconds / 2, swap)
        t.start()
    out = asyncio.run(load(port, reqs, rate, seconds, conns, check))
    if t is not None:
        t.join()
    return out


def reexport(run: Path, seed: int, model: str = "item2vec") -> None:
    emb_dir = run / model / "embeddings"
    old = EmbeddingSet.load(emb_dir)
    EmbeddingSet(old.ids, clustered_vectors(len(old), old.dim, seed=seed), kind=model).save(emb_dir)
    export_all({model: emb_dir}, run, n_trees=20, sample=200, seed=seed, n_jobs=1)


def get_json(url: str, data: bytes | None = None, headers=None) -> dict:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def wait_ready(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            get_json(url + "/readyz")
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {seconds}s")


def local_port() -> int:
    from serving.uvicorn_main import free_port

    return free_port("127.0.0.1")


def model_of(args) -> str:
    """The run's one model: the tower's, or item2vec."""
    return "item2vec" if args.tower == "none" else args.tower


def tower_flags(args) -> list[str]:
    return [] if args.tower == "none" else ["--set", f"serve.user_tower.model={args.tower}"]


def bench_uvicorn(run: Path, args, reqs) -> list[tuple]:
    port = local_port()
    env = {**os.environ, "RECEMB_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.uvicorn_main", "--run-dir", str(run), "--port", str(port), *tower_flags(args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_ready(url)
        run_load(port, reqs[:500], None, 1.0, 4)  # warm-up
        rows.append(("uvicorn", "max (closed loop)", run_load(port, reqs, None, args.seconds, args.conns)))
        rows.append(("uvicorn", f"{args.rate:.0f} rps", run_load(port, reqs, args.rate, args.seconds, args.conns)))

        def swap():
            reexport(run, seed=11, model=model_of(args))
            r = get_json(url + "/v1/admin/reload", b"", {"Authorization": f"Bearer {TOKEN}"})
            assert r["ok"], r

        res = run_load(port, reqs, args.rate, args.seconds, args.conns, swap)
        res["generation"] = get_json(url + "/readyz")["generation"]
        rows.append(("uvicorn", f"{args.rate:.0f} rps + swap", res))
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def bench_serve(run: Path, args, reqs) -> list[tuple]:
    from ray import serve

    from recemb.ray_runtime import ensure_ray
    from serving.serve_app import run_serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = ensure_ray(num_cpus=2)
    settings = ServeConfig(
        run_dir=str(run), port=local_port(), replicas=args.replicas, num_cpus=0.5, app_name="recemb_bench"
    )
    if args.tower != "none":
        settings = settings.model_copy(
            update={"user_tower": settings.user_tower.model_copy(update={"model": args.tower})}
        )
    rows = []
    try:
        url = run_serve(settings, reload_token=0)
        port = settings.port
        if args.direct:  # Serve's direct ingress: the replica's own port, no proxy hop
            from serving.serve_app import ingress_urls

            urls = ingress_urls(settings.app_name)
            if not urls:
                raise SystemExit("--direct: no replica port; start with RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
            url, port = urls[0], int(urls[0].rsplit(":", 1)[1])
        run_load(port, reqs[:500], None, 1.0, 4)
        rows.append(("ray serve", "max (closed loop)", run_load(port, reqs, None, args.seconds, args.conns)))
        rate = args.serve_rate
        rows.append(("ray serve", f"{rate:.0f} rps", run_load(port, reqs, rate, args.seconds, args.conns)))

        def swap():
            reexport(run, seed=12, model=model_of(args))
            run_serve(settings, reload_token=1)

        res = run_load(port, reqs, rate, args.seconds, args.conns, swap)
        res["generation"] = get_json(url + "/readyz")["generation"]
        rows.append(("ray serve", f"{rate:.0f} rps + swap", res))
    finally:
        serve.delete(settings.app_name)
        serve.shutdown()
        if started:
            import ray

            ray.shutdown()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--rate", type=float, default=500.0, help="open-loop rate of the uvicorn runs")
    ap.add_argument("--serve-rate", type=float, default=100.0, help="open-loop rate of the Serve runs")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--skip-uvicorn", action="store_true")
    ap.add_argument(
        "--direct",
        action="store_true",
        help="Serve runs call the replica's own port (run with RAY_SERVE_THROUGHPUT_OPTIMIZED=1)",
    )
    ap.add_argument("--tower", choices=["none", "sequence"], default="none", help="user tower for /v1/recommend")
    ap.add_argument("--history", type=int, default=5, help="recent items per recommend request")
    ap.add_argument("--covisit", action="store_true", help="also serve a co-visitation source, fused with the index")
    args = ap.parse_args()
    reqs = requests_mix(args.items, args.max_requests, history=args.history)
    with tempfile.TemporaryDirectory() as tmp:
        run = make_demo_run(
            Path(tmp) / "run",
            n_items=args.items,
            dim=args.dim,
            n_trees=20,
            model=model_of(args),
            tower=args.tower != "none",
            covisit=args.covisit,
        )
        rows = [] if args.skip_uvicorn else bench_uvicorn(run, args, reqs)
        if not args.skip_serve:
            reexport(run, seed=0, model=model_of(args))
            rows += bench_serve(run, args, reqs)
    tower = f"{args.tower} user tower, " if args.tower != "none" else ""
    tower += "blended with co-visitation (top 50), " if args.covisit else ""
    print(
        f"\n{args.items} items x dim {args.dim}, {tower}{args.history}-item histories, Annoy 20 trees, k=10, "
        f"{args.conns} connections, "
        f"{args.seconds:.0f}s per run, {os.cpu_count()} cores shared with the client"
    )
    print(
        f"{'mode':<10} {'load':<22} {'sent':>6} {'failed':>6} {'rps':>7} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'gen':>4}"
    )
    for mode, what, r in rows:
        print(
            f"{mode:<10} {what:<22} {r['sent']:>6} {r['failed']:>6} {r['rps']:>7.0f} {r['p50']:>7.2f} "
            f"{r['p95']:>7.2f} {r['p99']:>7.2f} {r.get('generation', ''):>4}"
        )
    by = {(m, w.split()[0]): r for m, w, r in rows}
    if ("ray serve", "max") in by and ("uvicorn", "max") in by:
        ratio = by[("uvicorn", "max")]["rps"] / by[("ray serve", "max")]["rps"]
        print(f"max throughput uvicorn / Ray Serve = {ratio:.1f}x")


if __name__ == "__main__":
    main()
