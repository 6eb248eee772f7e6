"""The same FastAPI app as a Ray Serve deployment (replicas, autoscaling, fractional CPUs).

Run it with ``serve run serving/serve_config.yaml`` / ``serve deploy ...``,
or from Python with :func:`run_serve`. Each replica loads the indexes once
in ``__init__`` (DESIGN.md: Serve deployments load models in the
constructor), builds the app of serving/app.py over them
(``__serve_build_asgi_app__``), and hot-swaps through ``reconfigure``: a new
``user_config`` with a different ``reload`` value makes every replica re-read
the configured run's indexes, check them and swap, without restarting. A
refused index leaves the replica serving the old one. User-tower queries are
batched with ``@serve.batch``.

Latency: through Serve's HTTP proxy a request costs ~5 ms more than the app's
own work on 2 cores (the proxy, the hop to the replica and back). Start Ray
with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` and every replica also answers on a
port of its own (direct ingress, on ``http_options.host``); calling those
answers like plain uvicorn (docs/serving.md). List them with
``python -m serving.serve_app urls [APP]`` or :func:`ingress_urls`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
from ray import serve

from recemb.errors import RecembError
from recemb.retrieval.serve_config import ServeConfig, serve_settings

log = logging.getLogger(__name__)
DEPLOYMENT = "RecembService"
# Replicas import serving/ from the checkout (it is not part of the installed package).
REPO_ROOT = str(Path(__file__).resolve().parents[1])
_UNSET = object()


@serve.deployment(name=DEPLOYMENT, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
@serve.ingress()
class RecembService:
    """One replica: a ServingState and the FastAPI app over it."""

    def __init__(self, settings: dict[str, Any]):
        from serving.state import ServingState

        self.settings = ServeConfig.model_validate(settings)
        tc = self.settings.user_tower
        self._tower_batch.set_max_batch_size(tc.max_batch_size)
        self._tower_batch.set_batch_wait_timeout_s(tc.batch_wait_ms / 1000.0)
        self.state = ServingState(self.settings, tower_query_factory=lambda tower: self._tower_query)
        result = self.state.reload()
        if not result.ok:  # fail the replica: Serve reports it and keeps any old version up
            raise RecembError(f"cannot serve {self.settings.run_dir}: {result.error}")
        self._reload_token: Any = _UNSET  # the user_config token these indexes are for
        self._fastapi = None

    def __serve_build_asgi_app__(self):
        from serving.app import create_app

        self._fastapi = create_app(self.settings, self.state)
        return self._fastapi

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``{"reload": token}``: a token different from the last one reloads and swaps the indexes."""
        token = (user_config or {}).get("reload")
        if self._reload_token is _UNSET:  # Serve's call right after __init__ loaded the indexes
            self._reload_token = token
            return
        if token == self._reload_token:
            return
        self._reload_token = token
        # The reload runs on the state's reload thread: this replica keeps answering meanwhile.
        result = await asyncio.wrap_future(self.state.reload_in_background())
        if self._fastapi is not None:
            from serving.app import record_reload

            record_reload(self._fastapi, result)
        if not result.ok:
            log.error("reconfigure: new index refused, still serving generation %s", result.generation)

    async def _tower_query(self, history, user_id) -> np.ndarray:
        return await self._tower_batch(list(history), user_id)

    # cast: ray's stubs type one-argument batching only, and hide set_max_batch_size & co.
    @cast(Any, serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002))
    async def _tower_batch(self, histories: list[list[str]], user_ids: list[str | None]) -> list[np.ndarray]:
        from serving.user_tower import check_batch

        tower = self.state.current().tower
        if tower is None:  # swapped out by a reload since the request started; the app falls back
            raise RecembError("the user tower is no longer loaded")
        out = await asyncio.get_running_loop().run_in_executor(None, tower.encode, histories, user_ids)
        return list(check_batch(out, len(histories), type(tower).__name__))


def deployment_options(settings: ServeConfig) -> dict[str, Any]:
    """The deployment's scaling and resources from the ``serve`` section (config-file keys)."""
    opts: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_cpus": settings.num_cpus},
        "max_ongoing_requests": settings.max_ongoing_requests,
    }
    if settings.max_replicas is not None:
        opts["autoscaling_config"] = {
            "min_replicas": settings.replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": max(1, settings.max_ongoing_requests // 4),
        }
    else:
        opts["num_replicas"] = settings.replicas
    return opts


def build_app(args: dict[str, Any]):
    """Serve application builder (``import_path: serving.serve_app:build_app``).

    ``args``: either ``settings`` (a resolved ``serve`` section as a dict) or
    ``config`` (pipeline YAML) with optional ``set`` (``key=value`` list) and
    ``run_dir``. Scaling comes from the deployment options / config file.
    """
    from recemb.config import build_config, load_config

    if args.get("settings"):
        settings = ServeConfig.model_validate(args["settings"])
        # @serve.deployment makes the class a Deployment (with bind/options); mypy ignores class decorators.
        return RecembService.bind(settings.model_dump(mode="json"))  # type: ignore[attr-defined]
    overrides = list(args.get("set", []))
    cfg = load_config(args["config"], overrides) if args.get("config") else build_config({}, overrides)
    serve_cfg = cfg.serve
    if args.get("run_dir"):
        serve_cfg = serve_cfg.model_copy(update={"run_dir": str(args["run_dir"])})
    settings = serve_settings(serve_cfg, cfg.run_dir, cfg.prepared_dir)
    deployment = RecembService.options(**deployment_options(settings))  # type: ignore[attr-defined]
    return deployment.bind(settings.model_dump(mode="json"))


def app_config(settings: ServeConfig, reload_token: Any = 0) -> dict[str, Any]:
    """The ``applications:`` entry of a ``serve deploy`` config for ``settings`` (resolved run_dir)."""
    if settings.run_dir is None:
        raise RecembError(
            "serve settings need run_dir; build them with recemb.retrieval.serve_config.serve_settings(...)"
        )
    return {
        "name": settings.app_name,
        "route_prefix": settings.route_prefix,
        "import_path": "serving.serve_app:build_app",
        # Replicas import serving/ from the checkout (it is not part of the installed package).
        "runtime_env": {"env_vars": {"PYTHONPATH": REPO_ROOT}},
        "args": {"settings": settings.model_dump(mode="json")},
        "deployments": [{**deployment_options(settings), "user_config": {"reload": reload_token}}],
    }


def ingress_urls(app_name: str, timeout_s: float = 5.0) -> list[str]:
    """The URLs at which the app's replicas answer HTTP themselves (Serve's direct ingress).

    With Ray started under ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (or
    ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``), every ingress replica also serves on a port
    of its own (30000-31000, on ``http_options.host``): a client or load balancer that
    calls those skips the proxy hop, Serve's main cost on a small machine
    (docs/serving.md). Empty when direct ingress is off. Waits up to ``timeout_s`` for
    the replicas to report their ports.
    """
    import time

    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RecembError("Serve is not running in this Ray cluster: deploy the app first (run_serve / serve deploy)")
    controller = client._controller  # no public API lists replica ports yet (Ray 2.60)
    deadline = time.monotonic() + timeout_s
    while True:
        groups = ray.get(controller.get_target_groups.remote(app_name))
        urls = [
            f"http://{t.ip}:{t.port}"
            for g in groups
            if g.app_name == app_name and str(g.protocol).upper().endswith("HTTP")
            for t in g.targets
        ]
        if urls or time.monotonic() > deadline:
            return urls
        time.sleep(0.2)


def run_serve(settings: ServeConfig, reload_token: Any = 0) -> str:
    """Deploy the app on Serve at ``settings.host:port`` (Ray must be up); returns the base URL.

    This is what ``serve deploy serving/serve_config.yaml`` does (a declarative
    config applied by the controller), so calling it again with only another
    ``reload_token`` reconfigures the running replicas in place: each one
    reloads, checks and swaps its indexes, none restarts. (An imperative
    ``serve.run`` would version every call anew and replace the replicas.)
    """
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    client = serve_start(http_options={"host": settings.host, "port": settings.port})
    schema = ServeDeploySchema.model_validate({"applications": [app_config(settings, reload_token)]})
    client.deploy_apps(schema, _blocking=True)
    return f"http://{settings.host}:{settings.port}{settings.route_prefix.rstrip('/')}"


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.serve_app urls [APP]``: print the app's direct-ingress replica URLs."""
    import argparse

    import ray

    ap = argparse.ArgumentParser(prog="python -m serving.serve_app", description=main.__doc__)
    ap.add_argument("command", choices=["urls"])
    ap.add_argument("app", nargs="?", default=ServeConfig().app_name)
    args = ap.parse_args(argv)
    ray.init(address="auto", namespace="serve", log_to_driver=False)
    urls = ingress_urls(args.app)
    if not urls:
        print(
            f"no replica of {args.app!r} serves on its own port: start Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 "
            "(docs/serving.md), or call the proxy",
            file=sys.stderr,
        )
        return 1
    print("\n".join(urls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
