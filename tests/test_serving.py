"""The online retrieval service (issue #8): endpoints, bad input, hot swap, Serve."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

# serving/ is a checkout package beside recemb/ (DESIGN.md §1), not installed with it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recemb.embeddings import EmbeddingSet  # noqa: E402
from recemb.errors import RecembError  # noqa: E402
from recemb.index.exact_export import export_exact  # noqa: E402
from recemb.index.export import export_all  # noqa: E402
from recemb.index.hnsw_export import export_hnsw  # noqa: E402
from recemb.retrieval.serve_config import ServeConfig  # noqa: E402
from serving.state import ServingState, load_snapshot  # noqa: E402
from serving.testing import clustered_vectors, make_demo_run  # noqa: E402
from serving.user_tower import MicroBatcher, load_user_tower  # noqa: E402
from serving.uvicorn_main import BackgroundServer  # noqa: E402

TOKEN = "s3cret-token"


# ------------------------------------------------------------------ helpers
def call(url: str, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    """``(status, parsed JSON or text)`` of one request over a fresh 127.0.0.1 connection."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    ctype = resp.getheader("content-type", "")
    return resp.status, json.loads(text) if ctype.startswith("application/json") else text


def item_ids(payload) -> list[str]:
    return [h["item_id"] for h in payload["items"]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_demo_run(tmp_path_factory.mktemp("run"), n_items=400, dim=16, seed=0)


@pytest.fixture(scope="module")
def server(run_dir):
    # exclude_seen: true (the demo's Zipf clicks repeat items, so "auto" would keep seen items).
    settings = ServeConfig(run_dir=str(run_dir), port=0, k_max=50, admin_token=TOKEN, exclude_seen=True)
    with BackgroundServer(settings) as srv:
        yield srv


# ---------------------------------------------------------------- endpoints
def test_health_ready_indexes_docs_and_metrics(server, run_dir):
    assert call(server.url, "GET", "/healthz") == (200, {"status": "ok"})
    status, ready = call(server.url, "GET", "/readyz")
    assert status == 200 and ready["generation"] >= 1
    status, idx = call(server.url, "GET", "/v1/indexes")
    manifest = json.loads((run_dir / "index/item2vec/manifest.json").read_text())
    assert status == 200 and idx["models"]["item2vec"]["sha256"] == manifest["sha256"]
    assert idx["models"]["item2vec"]["count"] == 400 and idx["popularity_items"] > 0
    status, spec = call(server.url, "GET", "/openapi.json")
    assert status == 200 and {"/v1/recommend", "/v1/similar/{item_id}", "/v1/admin/reload"} <= set(spec["paths"])
    assert call(server.url, "GET", "/docs")[0] == 200
    call(server.url, "GET", "/v1/similar/i1")
    status, text = call(server.url, "GET", "/metrics")
    assert status == 200
    assert 'recemb_requests_total{endpoint="/v1/similar/{item_id}",status="200"}' in text
    assert 'recemb_request_seconds_bucket{endpoint="/v1/similar/{item_id}",le="0.005"}' in text


def test_similar_and_recommend_answer_from_the_index(server):
    status, sim = call(server.url, "GET", "/v1/similar/i3?k=5")
    assert status == 200 and len(sim["items"]) == 5 and not sim["fallback"]
    assert "i3" not in item_ids(sim) and {h["source"] for h in sim["items"]} == {"item2vec"}
    scores = [h["score"] for h in sim["items"]]
    assert scores == sorted(scores, reverse=True)
    status, rec = call(server.url, "POST", "/v1/recommend", {"items": ["i3"], "k": 5, "query": "last"})
    assert status == 200 and item_ids(rec) == item_ids(sim)  # one item, "last": same query
    status, rec = call(
        server.url, "POST", "/v1/recommend", {"items": ["i3", "i7"], "k": 8, "exclude": item_ids(sim)[:2]}
    )
    assert status == 200 and len(rec["items"]) == 8
    assert not set(item_ids(sim)[:2]) & set(item_ids(rec)) and not {"i3", "i7"} & set(item_ids(rec))


def test_unknown_ids_get_popularity_or_404_as_configured(server, run_dir):
    status, rec = call(server.url, "POST", "/v1/recommend", {"user_id": "nobody", "items": ["nope"], "k": 3})
    assert status == 200 and rec["fallback"] and {h["source"] for h in rec["items"]} == {"popularity"}
    assert item_ids(rec)[0] == "i0"  # demo clicks are Zipf over rows: i0 is the most popular
    strict = ServeConfig(run_dir=str(run_dir), port=0, fallback="404")
    with BackgroundServer(strict) as srv:
        status, body = call(srv.url, "GET", "/v1/similar/nope")
        assert status == 404 and body["error"] == "unknown_ids"
        assert call(srv.url, "GET", "/v1/similar/i3")[0] == 200
        assert 'recemb_unknown_ids_total{endpoint="similar"} 1.0' in call(srv.url, "GET", "/metrics")[1]


BAD_REQUESTS = [
    ("GET", "/v1/similar/i1?k=0", None, None, 422),
    ("GET", "/v1/similar/i1?k=51", None, None, 422),  # k_max = 50
    ("GET", "/v1/similar/i1?k=ten", None, None, 422),
    ("GET", "/v1/similar/" + "x" * 300, None, None, 422),  # id longer than max_id_length
    ("GET", "/v1/similar/i1?exclude=" + "&exclude=".join(["a"] * 1001), None, None, 422),
    ("POST", "/v1/recommend", None, b"{not json", 422),
    ("POST", "/v1/recommend", None, b"", 422),
    ("POST", "/v1/recommend", None, b"[1, 2]", 422),
    ("POST", "/v1/recommend", {"items": "i1"}, None, 422),
    ("POST", "/v1/recommend", {"items": [1, 2]}, None, 422),
    ("POST", "/v1/recommend", {"items": [None]}, None, 422),
    ("POST", "/v1/recommend", {"items": [""]}, None, 422),
    ("POST", "/v1/recommend", {"items": ["i1"] * 201}, None, 422),  # max_history = 200
    ("POST", "/v1/recommend", {"k": -1}, None, 422),
    ("POST", "/v1/recommend", {"k": 10**12}, None, 422),
    ("POST", "/v1/recommend", {"k": 3.5}, None, 422),
    ("POST", "/v1/recommend", {"query": "median"}, None, 422),
    ("POST", "/v1/recommend", {"path": "/etc/passwd"}, None, 422),  # no field names a file
    ("POST", "/v1/recommend", {"blend": {"item2vec": -1}}, None, 422),
    ("POST", "/v1/recommend", {"blend": {"item2vec": 1.5}}, None, 422),
    ("POST", "/v1/recommend", {"blend": {"no_such_model": 2}}, None, 400),
    ("POST", "/v1/recommend", None, b"x" * 2_000_000, 413),
    ("PUT", "/v1/recommend", {}, None, 405),
    ("GET", "/v1/nothing", None, None, 404),
    ("POST", "/v1/admin/reload", None, None, 401),
    ("POST", "/v1/admin/reload", None, None, 401),  # wrong token: headers below
]


@pytest.mark.parametrize("i", range(len(BAD_REQUESTS)))
def test_bad_input_gets_a_4xx_with_a_json_error(server, i):
    method, path, body, raw, want = BAD_REQUESTS[i]
    headers = {"Authorization": "Bearer wrong"} if i == len(BAD_REQUESTS) - 1 else None
    status, payload = call(server.url, method, path, body, headers, raw)
    assert status == want, payload
    assert isinstance(payload, dict) and payload["error"] and payload["message"]


def test_admin_reload_is_off_without_a_token(run_dir, monkeypatch):
    monkeypatch.delenv("RECEMB_ADMIN_TOKEN", raising=False)
    with BackgroundServer(ServeConfig(run_dir=str(run_dir), port=0)) as srv:
        assert call(srv.url, "POST", "/v1/admin/reload")[0] == 404
        assert "/v1/admin/reload" not in call(srv.url, "GET", "/openapi.json")[1]["paths"]


# ----------------------------------------------------------------- hot swap
def reexport(run_dir: Path, seed: int) -> None:
    """A retrained model: new vectors for the same ids, exported over the old index (atomically)."""
    emb_dir = run_dir / "item2vec" / "embeddings"
    old = EmbeddingSet.load(emb_dir)
    EmbeddingSet(old.ids, clustered_vectors(len(old), old.dim, seed=seed), kind="item2vec").save(emb_dir)
    export_all({"item2vec": emb_dir}, run_dir, n_trees=10, sample=100, seed=seed, n_jobs=1)


def hammer(url: str, n: int, failures: list, generations: set) -> None:
    conn_host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(conn_host, int(port), timeout=10)  # keep-alive, like a client pool
    for r in range(n):
        try:
            if r % 2:
                conn.request("GET", f"/v1/similar/i{r % 400}?k=10")
            else:
                body = json.dumps({"items": [f"i{r % 400}", f"i{(r * 7) % 400}"], "k": 10})
                conn.request("POST", "/v1/recommend", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            if resp.status != 200 or len(payload["items"]) != 10:
                failures.append((resp.status, payload))
            else:
                generations.add(payload["generation"])
        except Exception as e:  # a dropped connection is a failure too
            failures.append(repr(e))
            conn = http.client.HTTPConnection(conn_host, int(port), timeout=10)


def test_hot_swap_under_concurrent_requests_loses_none(tmp_path):
    run = make_demo_run(tmp_path / "run", n_items=400, dim=16, seed=0)
    with BackgroundServer(ServeConfig(run_dir=str(run), port=0, admin_token=TOKEN)) as srv:
        before = item_ids(call(srv.url, "GET", "/v1/similar/i3?k=10")[1])
        failures, generations = [], set()
        threads = [threading.Thread(target=hammer, args=(srv.url, 150, failures, generations)) for _ in range(4)]
        for t in threads:
            t.start()
        for seed in (1, 2):  # two swaps while the requests run
            reexport(run, seed)
            status, result = call(srv.url, "POST", "/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert status == 200 and result["ok"], result
        for t in threads:
            t.join()
        assert failures == []
        assert call(srv.url, "GET", "/readyz")[1]["generation"] == 3
        after = item_ids(call(srv.url, "GET", "/v1/similar/i3?k=10")[1])
        assert after != before  # the new vectors answer now
        assert 'recemb_index_reloads_total{result="ok"} 2.0' in call(srv.url, "GET", "/metrics")[1]


def swap_in_bad_index(run: Path) -> Path:
    """Replace <run>/index/item2vec by a truncated export, by rename as an exporter would; returns the backup."""
    live, bad, backup = run / "index/item2vec", run / "index/.bad", run / "index/.good"
    shutil.copytree(live, bad)
    ann = bad / "items.ann"
    ann.write_bytes(ann.read_bytes()[:-100])  # truncated copy; the live file is untouched
    live.rename(backup)
    bad.rename(live)
    return backup


def test_bad_new_index_is_refused_and_the_old_keeps_serving(tmp_path):
    run = make_demo_run(tmp_path / "run", n_items=400, dim=16, seed=0)
    with BackgroundServer(ServeConfig(run_dir=str(run), port=0, admin_token=TOKEN)) as srv:
        before = call(srv.url, "GET", "/v1/similar/i3?k=10")[1]
        swap_in_bad_index(run)
        status, body = call(srv.url, "POST", "/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 409 and body["error"] == "reload_refused"
        assert "re-export" in body["detail"]["error"] and body["detail"]["generation"] == 1
        assert call(srv.url, "GET", "/v1/similar/i3?k=10") == (200, before)
        idx = call(srv.url, "GET", "/v1/indexes")[1]
        assert idx["reloads"] == {"ok": 1, "refused": 1} and not idx["last_reload"]["ok"]


def test_service_blends_covisitation_with_the_index_and_refuses_a_damaged_table(tmp_path):
    run = make_demo_run(tmp_path / "run", n_items=300, dim=16, seed=0, covisit=True)
    with BackgroundServer(ServeConfig(run_dir=str(run), port=0, admin_token=TOKEN)) as srv:
        idx = call(srv.url, "GET", "/v1/indexes")[1]
        assert idx["models"]["covisit"]["kind"] == "covisit" and idx["models"]["item2vec"]["kind"] == "annoy"
        status, rec = call(srv.url, "POST", "/v1/recommend", {"items": ["i0", "i1", "i2"], "k": 20})
        assert status == 200 and not rec["fallback"]
        assert {h["source"] for h in rec["items"]} == {"covisit", "item2vec"}  # fused: both contribute
        scores = [h["score"] for h in rec["items"]]
        assert scores == sorted(scores, reverse=True)
        # The same request with quotas: half of the list from each source.
        status, quota = call(
            srv.url,
            "POST",
            "/v1/recommend",
            {"items": ["i0", "i1", "i2"], "k": 20, "blend": {"covisit": 10, "item2vec": 10}},
        )
        assert status == 200 and [h["source"] for h in quota["items"]].count("covisit") == 10
        # A bad export arrives as export writes (a new directory renamed in): the old mmaps stay valid.
        table = run / "index" / "covisit"
        bad = tmp_path / "bad-covisit"
        shutil.copytree(table, bad)
        np.save(bad / "weights.npy", np.zeros((3, 3), np.float32))
        table.rename(tmp_path / "old-covisit")
        bad.rename(table)
        status, body = call(srv.url, "POST", "/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 409 and "do not belong together" in body["detail"]["error"]
        assert call(srv.url, "POST", "/v1/recommend", {"items": ["i0", "i1", "i2"], "k": 20}) == (200, rec)


def test_hot_swap_to_a_compressed_exact_index(tmp_path):
    """Re-export the same vectors with another backend and codec (Annoy -> exact int8): the swap is taken."""
    run = make_demo_run(tmp_path / "run", n_items=300, dim=16, seed=0)
    settings = ServeConfig(run_dir=str(run), port=0, admin_token=TOKEN, exclude_seen=True)
    with BackgroundServer(settings) as srv:
        before = call(srv.url, "POST", "/v1/recommend", {"items": ["i3", "i7"], "k": 10})[1]
        export_exact(run / "item2vec" / "embeddings", run / "index" / "item2vec", codec="int8", rerank=50)
        status, body = call(srv.url, "POST", "/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["generation"] == 2
        idx = call(srv.url, "GET", "/v1/indexes")[1]["models"]["item2vec"]
        assert idx["kind"] == "exact" and idx["manifest"]["codec"] == "int8"
        status, after = call(srv.url, "POST", "/v1/recommend", {"items": ["i3", "i7"], "k": 10})
        assert status == 200 and after["generation"] == 2 and len(after["items"]) == 10
        # Exact after the re-rank: at least the Annoy answer's quality (same or better neighbours).
        assert sum(h["score"] for h in after["items"]) >= sum(h["score"] for h in before["items"]) - 1e-5


def test_hot_swap_to_hnsw_then_items_added_and_removed_live(tmp_path):
    """Annoy -> HNSW by a reload; then a cold item's vector is servable at once (PUT) and a withdrawn
    item is never returned (DELETE), without a rebuild; both are admin-only and checked."""
    run = make_demo_run(tmp_path / "run", n_items=300, dim=16, seed=0)
    settings = ServeConfig(run_dir=str(run), port=0, admin_token=TOKEN, exclude_seen=True)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with BackgroundServer(settings) as srv:
        body = {"model": "item2vec", "vector": [1.0] * 16}
        assert call(srv.url, "PUT", "/v1/admin/items/cold-1", body, headers=admin)[0] == 400  # Annoy: cannot
        export_hnsw(run / "item2vec" / "embeddings", run / "index" / "item2vec", m=8, ef_construction=64)
        status, reloaded = call(srv.url, "POST", "/v1/admin/reload", headers=admin)
        assert status == 200 and reloaded["generation"] == 2
        assert call(srv.url, "GET", "/v1/indexes")[1]["models"]["item2vec"]["kind"] == "hnsw"
        emb = EmbeddingSet.load(run / "item2vec" / "embeddings")
        rows = emb.lookup(["i3", "i7"])
        unit = emb.vectors[rows] / np.linalg.norm(emb.vectors[rows], axis=1, keepdims=True)
        body = {"model": "item2vec", "vector": unit.mean(0).tolist()}
        assert call(srv.url, "PUT", "/v1/admin/items/cold-1", body)[0] == 401  # no token
        status, put = call(srv.url, "PUT", "/v1/admin/items/cold-1", body, headers=admin)
        assert status == 200 and put["generation"] == 2
        status, rec = call(srv.url, "POST", "/v1/recommend", {"items": ["i3", "i7"], "k": 10})
        assert status == 200 and rec["items"][0]["item_id"] == "cold-1"
        assert call(srv.url, "GET", "/v1/similar/cold-1?k=5")[1]["fallback"] is False
        status, _ = call(srv.url, "DELETE", "/v1/admin/items/cold-1", headers=admin)
        assert status == 200
        second = item_ids(rec)[1]
        call(srv.url, "DELETE", f"/v1/admin/items/{second}", headers=admin)
        after = item_ids(call(srv.url, "POST", "/v1/recommend", {"items": ["i3", "i7"], "k": 10})[1])
        assert len(after) == 10 and not {"cold-1", second} & set(after)
        bad = [
            ({"model": "item2vec", "vector": [1.0] * 15}, 400, "shape"),
            ({"model": "nope", "vector": [1.0] * 16}, 400, "not an embedding source"),
            ({"model": "item2vec", "vector": []}, 422, "vector"),
            ({"model": "item2vec", "vector": [1.0] * 16, "path": "/etc/passwd"}, 422, "path"),
        ]
        for payload, code, words in bad:
            status, err = call(srv.url, "PUT", "/v1/admin/items/x", payload, headers=admin)
            assert status == code and words in err["message"], (payload, err)
        nan = b'{"model": "item2vec", "vector": [NaN' + b", 1.0" * 15 + b"]}"
        status, err = call(srv.url, "PUT", "/v1/admin/items/x", raw=nan, headers=admin)
        assert status == 400 and "NaN" in err["message"]  # JSON's NaN extension parses; the index refuses it
        # a reload starts again from the export: the live changes are gone, as documented
        assert call(srv.url, "POST", "/v1/admin/reload", headers=admin)[0] == 200
        assert call(srv.url, "GET", "/v1/similar/cold-1?k=5")[1]["fallback"] is True


def test_first_load_failure_is_not_ready_and_recovers(tmp_path):
    settings = ServeConfig(run_dir=str(tmp_path / "empty"), port=0)
    state = ServingState(settings)
    result = state.reload()
    assert not result.ok and "recemb export" in result.error and not state.ready
    with pytest.raises(RecembError, match="no index loaded"):
        state.current()
    make_demo_run(tmp_path / "empty", n_items=50, dim=4)
    assert state.reload().ok and state.current().generation == 1


# --------------------------------------------------------------- user tower
class FakeTower:
    """Answers every user with the vector of one item: the top hit must be that item's neighbour."""

    source = "item2vec"

    def __init__(self, vector: np.ndarray):
        self.vector = vector
        self.calls: list[int] = []

    def encode(self, histories, user_ids):
        self.calls.append(len(histories))
        return np.tile(self.vector, (len(histories), 1))


def test_micro_batcher_gathers_concurrent_requests():
    tower = FakeTower(np.ones(4, np.float32))

    async def go():
        batcher = MicroBatcher(tower, max_batch_size=8, wait_ms=20)
        out = await asyncio.gather(*[batcher([f"i{r}"], None) for r in range(20)])
        return batcher, out

    batcher, out = asyncio.run(go())
    assert len(out) == 20 and all(np.array_equal(o, np.ones(4)) for o in out)
    assert sum(batcher.batches) == 20 and max(batcher.batches) <= 8 and len(batcher.batches) <= 4


def test_micro_batcher_passes_errors_to_every_waiter():
    class Broken(FakeTower):
        def encode(self, histories, user_ids):
            return np.ones((len(histories) + 1, 4))  # wrong batch size

    async def go():
        batcher = MicroBatcher(Broken(np.ones(4)), max_batch_size=4, wait_ms=1)
        return await asyncio.gather(*[batcher(["i1"], None) for _ in range(3)], return_exceptions=True)

    assert all(isinstance(e, RecembError) and "expected [3, D]" in str(e) for e in asyncio.run(go()))


def test_recommend_uses_the_user_tower_query_when_one_is_loaded(run_dir):
    vec = np.asarray(EmbeddingSet.load(run_dir / "item2vec/embeddings").vector("i42"))
    tower = FakeTower(vec)
    settings = ServeConfig(run_dir=str(run_dir), port=0)

    def loader(s, gen):
        snap = load_snapshot(s, gen)
        return dataclasses.replace(snap, tower=tower, tower_query=MicroBatcher(tower, 8, 1.0))

    state = ServingState(settings, loader=loader)
    assert state.reload().ok
    with BackgroundServer(settings, state) as srv:
        status, rec = call(srv.url, "POST", "/v1/recommend", {"user_id": "u1", "items": ["i3"], "k": 5})
        sim = call(srv.url, "GET", "/v1/similar/i42?k=6")[1]
    assert status == 200 and sum(tower.calls) == 1
    # the query is i42's own vector: its neighbours, i42 itself first (not seen, so not excluded)
    assert item_ids(rec)[0] == "i42" and item_ids(rec)[1:] == [i for i in item_ids(sim) if i != "i3"][:4]


def test_user_tower_is_loaded_from_the_run_and_batched(tmp_path, monkeypatch, caplog):
    from recemb.retrieval import towers as user_tower

    run = make_demo_run(tmp_path / "run", n_items=60, dim=4, model="two_tower")
    settings = ServeConfig(run_dir=str(run))
    assert load_user_tower(run) is None and load_snapshot(settings, 1).tower is None  # none exported
    (run / "two_tower/user_tower").mkdir()

    def no_loader(model):
        raise ImportError("no two-tower package")

    monkeypatch.setattr(user_tower, "_loader", no_loader)
    assert load_user_tower(run) is None and "not available" in caplog.text

    class Model:  # the two-tower UserTowerModel's surface: encode(histories) -> [B, D]
        def encode(self, histories):
            return np.ones((len(histories), 4), np.float32)

    loaded = []
    monkeypatch.setattr(user_tower, "_loader", lambda model: lambda d: loaded.append(d) or Model())
    snap = load_snapshot(settings, 1)
    assert loaded == [run / "two_tower/user_tower"] and snap.tower.source == "two_tower"
    assert isinstance(snap.tower_query, MicroBatcher)
    vec = asyncio.run(snap.tower_query(["i1"], "u1"))
    np.testing.assert_array_equal(vec, np.ones(4))
    with pytest.raises(RecembError, match="not loaded"):  # the tower must query a loaded index
        load_snapshot(
            settings.model_copy(update={"user_tower": settings.user_tower.model_copy(update={"source": "item2vec"})}), 1
        )


# --------------------------------------------------------------- settings
def test_settings_are_checked():
    with pytest.raises(ValueError, match="k_default"):
        ServeConfig(k_default=20, k_max=10)
    with pytest.raises(ValueError, match="extra"):
        ServeConfig(hots="0.0.0.0")
    assert ServeConfig().host == "127.0.0.1" and ServeConfig(admin_token="t").token() == "t"


def test_serve_config_file_is_a_valid_serve_deploy_config():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    tree = yaml.safe_load((Path(__file__).parents[1] / "serving/serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(tree)
    assert schema.http_options.host == "127.0.0.1"
    assert schema.applications[0].import_path == "serving.serve_app:build_app"


# --------------------------------------------------------------- fuzz
def test_openapi_fuzz_never_answers_5xx(run_dir):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    from serving.app import create_app

    app = create_app(ServeConfig(run_dir=str(run_dir), k_max=50, admin_token=TOKEN))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = []
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    for result, mode in [(r, m) for r in schema.get_all_operations() for m in modes]:
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=15, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        def check(case):
            response = case.call()
            seen.append(response.status_code)
            assert response.status_code < 500, (case.path, case.body, response.text)

        try:
            check()
        except Unsatisfiable:  # negative mode on an endpoint without parameters: nothing to break
            assert mode is schemathesis.GenerationMode.NEGATIVE
    assert len(seen) >= 60 and sum(400 <= s < 500 for s in seen) >= 10


# --------------------------------------------------------------- Ray Serve
@pytest.mark.slow
def test_ray_serve_runs_the_same_endpoints_and_swaps_in_place(ray_local, tmp_path):
    from ray import serve

    from serving.serve_app import ingress_urls, run_serve
    from serving.uvicorn_main import free_port

    run = make_demo_run(tmp_path / "run", n_items=400, dim=16, seed=0)
    settings = ServeConfig(run_dir=str(run), port=free_port("127.0.0.1"), num_cpus=0.25, app_name="recemb_test")
    try:
        url = run_serve(settings, reload_token=0)
        assert call(url, "GET", "/readyz")[1]["generation"] == 1
        before = call(url, "GET", "/v1/similar/i3?k=10")[1]
        assert len(before["items"]) == 10
        assert call(url, "POST", "/v1/recommend", {"items": ["i3"], "k": 0})[0] == 422
        reexport(run, seed=5)
        failures, generations = [], set()
        t = threading.Thread(target=hammer, args=(url, 200, failures, generations))
        t.start()
        run_serve(settings, reload_token=1)  # only user_config changes: reconfigure in place
        t.join()
        assert failures == []
        after = call(url, "GET", "/v1/similar/i3?k=10")[1]
        assert after["generation"] == 2 and item_ids(after) != item_ids(before)
        # Direct ingress (conftest starts Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1): the replica's
        # own port answers the same, from the same swapped generation, without the proxy.
        direct = ingress_urls(settings.app_name)
        assert len(direct) == 1 and direct[0].startswith("http://127.0.0.1:") and direct[0] != url
        assert call(direct[0], "GET", "/v1/similar/i3?k=10") == (200, after)
        swap_in_bad_index(run)
        run_serve(settings, reload_token=2)
        idx = call(url, "GET", "/v1/indexes")[1]
        assert idx["generation"] == 2 and idx["reloads"]["refused"] == 1
        assert call(url, "GET", "/v1/similar/i3?k=10") == (200, after)
        assert call(direct[0], "GET", "/v1/similar/i3?k=10") == (200, after)
    finally:
        serve.delete(settings.app_name)
        serve.shutdown()
