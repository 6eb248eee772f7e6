"""The HTTP API: one FastAPI app that plain uvicorn and Ray Serve both run.

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs``)::

    GET  /healthz                  liveness: the process answers
    GET  /readyz                   readiness: an index generation is loaded (else 503)
    GET  /v1/indexes               loaded generation, models and their manifests, last reload
    GET  /v1/similar/{item_id}     ?k=10&exclude=a&exclude=b  -> items like this one
    POST /v1/recommend             {user_id?, items?, k?, exclude?, blend?, query?}
    GET  /metrics                  Prometheus text
    POST /v1/admin/reload          only when an admin token is configured (Bearer token)
    PUT  /v1/admin/items/{item_id} {model, vector}: searchable now (HNSW indexes; admin)
    DELETE /v1/admin/items/{item_id}  never returned again (admin)

Item changes are made in this process's loaded generation and last until the
next reload (re-export to keep them); under Ray Serve each replica has its own.

Every answer to a bad request is a 4xx with a JSON body
``{"error": code, "message": text, "detail": ...}``; a request can name item
and user ids, never a file (reloads re-read the configured run directory).
Unknown ids get the popularity fallback (``"fallback": true``) or a 404,
as ``serve.fallback`` says. Handlers are ``async`` and do their ~0.1 ms of
numpy work on the event loop: a thread hop would cost more than the work.
"""

# No `from __future__ import annotations`: FastAPI must resolve the
# request models, built per app from the settings, at definition time.
import asyncio
import hmac
import logging
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException

from recemb import __version__
from recemb.errors import RecembError
from recemb.retrieval.blend import Answer
from recemb.retrieval.serve_config import ServeConfig
from serving.metrics import MetricsMiddleware, ServiceMetrics
from serving.state import NotReady, ServingState

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    503: "not_ready",
}


class Hit(BaseModel):
    item_id: str
    score: float = Field(description="the source's own similarity (not comparable across sources)")
    source: str = Field(description="model name, or 'popularity' for the fallback")


class Candidates(BaseModel):
    items: list[Hit]
    fallback: bool = Field(description="true when neither the user nor any item was known")
    generation: int = Field(description="index generation that answered")


class ErrorBody(BaseModel):
    error: str
    message: str
    detail: Any = None


def _error(status: int, message: str, detail: Any = None, code: str | None = None) -> JSONResponse:
    body = {"error": code or _STATUS_CODES.get(status, "error"), "message": message, "detail": detail}
    return JSONResponse(body, status_code=status)


class BodyLimitMiddleware:
    """Pure ASGI: refuse a declared body over ``max_bytes`` with 413 before reading it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    if not value.isdigit() or int(value) > self.max_bytes:
                        resp = _error(413, f"request body over {self.max_bytes} bytes; send fewer ids")
                        await resp(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


def create_app(settings: ServeConfig, state: ServingState | None = None) -> FastAPI:
    """The service over ``settings.run_dir``; loads the indexes now unless ``state`` is given.

    Args:
        settings: resolved ``serve`` section (see :func:`recemb.retrieval.serve_config.serve_settings`).
        state: an existing :class:`ServingState` (Ray Serve passes its replica's).
    """
    if state is None:
        state = ServingState(settings)
        result = state.reload()
        if not result.ok:
            log.error("no index loaded (%s); /readyz answers 503 until a reload succeeds", result.error)
    s = settings
    metrics = ServiceMetrics()
    if state.ready:
        metrics.generation.set(state.current().generation)
    IdStr = Annotated[str, StringConstraints(min_length=1, max_length=s.max_id_length)]

    class RecommendRequest(BaseModel):
        """Recommendations for a user id and/or their recent items (oldest first)."""

        model_config = ConfigDict(extra="forbid")
        user_id: IdStr | None = None
        items: list[IdStr] = Field(default_factory=list, max_length=s.max_history)
        k: int = Field(s.k_default, ge=1, le=s.k_max)
        exclude: list[IdStr] = Field(default_factory=list, max_length=s.max_exclude)
        blend: dict[IdStr, Annotated[int, Field(ge=0, le=s.k_max)] | Annotated[float, Field(ge=0, le=1)]] | None = (
            Field(
                None,
                max_length=32,
                description="{source: count (int) or fraction of k (float)}; default: the configured quotas",
            )
        )
        query: Literal["last", "mean", "mean_last_n", "recency"] | None = None

    class ItemVector(BaseModel):
        """An item's vector for one model's index (admin)."""

        model_config = ConfigDict(extra="forbid")
        model: IdStr
        vector: list[float] = Field(min_length=1, max_length=4096)

    app = FastAPI(
        title="recemb retrieval service",
        version=__version__,
        description="Candidate retrieval over exported recemb indexes (item2vec, two-tower).",
        responses={422: {"model": ErrorBody}},
    )
    app.state.serving = state
    app.state.metrics = metrics
    # Bodies are bounded by the list limits; refuse bigger ones unread (metrics wraps it, so 413s count).
    max_body = (s.max_history + s.max_exclude + 2) * (s.max_id_length + 8) + 64 * 1024
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # ------------------------------------------------------------ errors
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
        for e in errors:  # echoing whole bodies back bloats error replies
            e.pop("input", None)
            e.pop("ctx", None)
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: NotReady):
        return _error(503, str(exc))

    @app.exception_handler(RecembError)
    async def _recemb(request: Request, exc: RecembError):
        return _error(400, str(exc))

    # ------------------------------------------------------------ health
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz():
        snap = state.current()  # NotReady -> 503
        return {"status": "ready", "generation": snap.generation}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/indexes", tags=["indexes"])
    async def indexes() -> dict[str, Any]:
        out: dict[str, Any] = {"ready": state.ready, "reloads": dict(state.reloads)}
        out["last_reload"] = state.last_reload.as_dict() if state.last_reload else None
        out.update(state.current().describe() if state.ready else {"generation": 0, "models": {}})
        return out

    # ------------------------------------------------------------ retrieval
    def _reply(answer: Answer, endpoint: str, generation: int) -> JSONResponse:
        if answer.fallback:
            if s.fallback == "404":
                metrics.not_found.labels(endpoint).inc()
                return _error(
                    404, "unknown user and items: no model knows them (serve.fallback=404)", code="unknown_ids"
                )
            metrics.fallbacks.labels(endpoint).inc()
        items = [{"item_id": i, "score": sc, "source": src} for i, sc, src in answer.hits]
        return JSONResponse({"items": items, "fallback": answer.fallback, "generation": generation})

    @app.get(
        "/v1/similar/{item_id}", tags=["retrieval"], response_model=Candidates, responses={404: {"model": ErrorBody}}
    )
    async def similar(
        item_id: Annotated[str, Path(min_length=1, max_length=s.max_id_length)],
        k: Annotated[int, Query(ge=1, le=s.k_max)] = s.k_default,
        exclude: Annotated[list[IdStr], Query(max_length=s.max_exclude)] = [],  # noqa: B006 - FastAPI copies
    ):
        """Items most similar to ``item_id`` (never the item itself), blended over the models."""
        snap = state.current()
        return _reply(snap.retriever.similar(item_id, k, blocked=exclude), "similar", snap.generation)

    @app.post("/v1/recommend", tags=["retrieval"], response_model=Candidates, responses={404: {"model": ErrorBody}})
    async def recommend(req: RecommendRequest):
        """Top-k for a user: their own vector where a model has one, else their recent items."""
        snap = state.current()
        query_vectors = None
        if snap.tower is not None and snap.tower_query is not None and (req.items or req.user_id is not None):
            try:
                query_vectors = {snap.tower.source: await snap.tower_query(req.items, req.user_id)}
            except RecembError as e:  # keep answering from the item vectors
                metrics.tower_errors.inc()
                log.warning("user tower failed, using the history query: %s", e)
        answer = snap.retriever.answer(
            req.items,
            req.k,
            exclude=req.exclude,
            quotas=req.blend,
            user_id=req.user_id,
            query=req.query,
            query_vectors=query_vectors,
        )
        return _reply(answer, "recommend", snap.generation)

    # ------------------------------------------------------------ admin
    token = s.token()
    if token:

        def _authorised(authorization: str | None) -> bool:
            given = (authorization or "").removeprefix("Bearer ").strip()
            return hmac.compare_digest(given.encode(), token.encode())

        _unauthorised = "missing or wrong admin token (Authorization: Bearer <token>)"

        @app.put("/v1/admin/items/{item_id}", tags=["admin"], responses={401: {"model": ErrorBody}})
        async def put_item(
            item_id: Annotated[str, Path(min_length=1, max_length=s.max_id_length)],
            body: ItemVector,
            authorization: Annotated[str | None, Header()] = None,
        ):
            """Make an item searchable now in one model's HNSW index (a new item, or a new vector for a
            known one, e.g. a cold item's content vector); lasts until the next reload."""
            if not _authorised(authorization):
                return _error(401, _unauthorised)
            snap = state.current()
            snap.retriever.add_items(body.model, [item_id], np.asarray([body.vector], dtype=np.float32))
            return {"item_id": item_id, "model": body.model, "generation": snap.generation}

        @app.delete("/v1/admin/items/{item_id}", tags=["admin"], responses={401: {"model": ErrorBody}})
        async def delete_item(
            item_id: Annotated[str, Path(min_length=1, max_length=s.max_id_length)],
            authorization: Annotated[str | None, Header()] = None,
        ):
            """Never return an item again from any model or the fallback; lasts until the next reload."""
            if not _authorised(authorization):
                return _error(401, _unauthorised)
            snap = state.current()
            snap.retriever.remove_items([item_id])
            return {"item_id": item_id, "removed": True, "generation": snap.generation}

        @app.post("/v1/admin/reload", tags=["admin"], responses={401: {"model": ErrorBody}, 409: {"model": ErrorBody}})
        async def reload(authorization: Annotated[str | None, Header()] = None):
            """Re-read the configured run's indexes and swap them in (refused if any is bad)."""
            if not _authorised(authorization):
                return _error(401, _unauthorised)
            result = await asyncio.wrap_future(state.reload_in_background())
            record_reload(app, result)
            if not result.ok:
                return _error(
                    409,
                    f"new index refused; generation {result.generation} keeps serving",
                    result.as_dict(),
                    code="reload_refused",
                )
            return result.as_dict()

    return app


def record_reload(app: FastAPI, result) -> None:
    """Count a reload attempt in the app's metrics (also called by Ray Serve's reconfigure)."""
    m: ServiceMetrics = app.state.metrics
    m.reloads.labels("ok" if result.ok else "refused").inc()
    m.generation.set(result.generation)
