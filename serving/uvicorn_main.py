"""Run the service under plain uvicorn: ``recemb serve CONFIG`` (or ``python -m serving.uvicorn_main``).

One process, one event loop, uvloop + httptools when installed. On one box
this is the fast mode (DESIGN.md §9: ~8x the requests/s of Ray Serve on 2
cores); Ray Serve (serving/serve_app.py) runs the same app across replicas.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time

import uvicorn

from recemb.config import PipelineConfig, build_config, load_config
from recemb.errors import RecembError
from recemb.retrieval.serve_config import ServeConfig, serve_settings
from serving.app import create_app
from serving.state import ServingState

log = logging.getLogger(__name__)


def build_server(settings: ServeConfig, state: ServingState | None = None) -> uvicorn.Server:
    """A uvicorn Server over a freshly loaded app; raises RecembError if no index loads."""
    if state is None:
        state = ServingState(settings)
        result = state.reload()
        if not result.ok:
            raise RecembError(f"cannot serve {settings.run_dir}: {result.error}")
    app = create_app(settings, state)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=settings.access_log,
        # Keep-alive past the load generator's think time; no lifespan work to do.
        timeout_keep_alive=30,
        lifespan="off",
    )
    return uvicorn.Server(config)


def run_uvicorn(cfg: PipelineConfig, serve: ServeConfig | None = None) -> None:
    """Serve ``cfg``'s run on ``serve.host:serve.port`` until interrupted (the ``serve`` stage).

    ``serve`` defaults to ``cfg.serve``; its unset run_dir / prepared_dir are the run's.
    """
    settings = serve_settings(serve or cfg.serve, cfg.run_dir, cfg.prepared_dir)
    server = build_server(settings)
    log.info("recemb serving %s on http://%s:%s (docs at /docs)", settings.run_dir, settings.host, settings.port)
    server.run()


class BackgroundServer:
    """uvicorn in a daemon thread on 127.0.0.1 (tests, notebooks); ``with`` stops it.

    ``port=0`` in the settings binds a free port; :attr:`url` has the real one.
    """

    def __init__(self, settings: ServeConfig, state: ServingState | None = None):
        if settings.port == 0:
            settings = settings.model_copy(update={"port": free_port(settings.host)})
        self.settings = settings
        self.server = build_server(settings, state)
        self.app = self.server.config.app
        self.url = f"http://{settings.host}:{settings.port}"
        self._thread = threading.Thread(target=self.server.run, name="recemb-uvicorn", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RecembError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)


def free_port(host: str) -> int:
    """A TCP port on ``host`` that is free now (the OS picks it; racy, fine for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.uvicorn_main CONFIG [--set k=v]`` or ``--run-dir DIR`` (no config)."""
    ap = argparse.ArgumentParser(description="recemb retrieval service under uvicorn")
    ap.add_argument("config", nargs="?", help="pipeline YAML (its serve: section)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--run-dir", help="serve this run directory (default: the config's run)")
    ap.add_argument("--port", type=int, help="override serve.port")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides) if args.config else build_config({}, args.overrides)
        update = {k: v for k, v in (("run_dir", args.run_dir), ("port", args.port)) if v is not None}
        serve = cfg.serve.model_copy(update=update)
        run_uvicorn(cfg, ServeConfig.model_validate(serve.model_dump()))
    except RecembError as e:
        print(f"serve failed: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
