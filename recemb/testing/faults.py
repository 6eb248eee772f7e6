"""Fault injection for tests: named points in production code that raise once when asked to.

Production code calls :func:`check` at a few named points; it does nothing
unless ``RECEMB_FAULTS`` names that point::

    RECEMB_FAULTS="train.epoch@epoch=3,rank=1:/tmp/run/fault.marker"
    RECEMB_FAULTS="candidates.part@part=2:/tmp/c/fault.marker;train.epoch@epoch=2:/tmp/m"

Each rule is ``point[@key=value,...]:marker``. A rule fires when the point's
keyword values equal the listed ones (compared as strings) and ``marker``
does not exist yet; it then creates ``marker`` and raises
:class:`InjectedFault`, so a retried or resumed run passes the point. Being
an environment variable it reaches every process that inherits it; the
training runner and the Ray Data candidates job also hand it to their Ray
workers explicitly (:func:`env`), because an already running Ray does not
see variables set after it started. Points in use: ``train.epoch`` (epoch
1-based, rank) and ``candidates.part`` (part).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ENV = "RECEMB_FAULTS"


class InjectedFault(RuntimeError):
    """The failure a test asked for through ``RECEMB_FAULTS``."""


def check(point: str, **where: object) -> None:
    """Raise :class:`InjectedFault` once if ``RECEMB_FAULTS`` has a rule for ``point`` matching ``where``."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for rule in filter(None, spec.split(";")):
        head, _, marker = rule.partition(":")
        name, _, conds = head.partition("@")
        if name != point or not marker:
            continue
        wanted = dict(c.split("=", 1) for c in conds.split(",") if c)
        if any(str(where.get(k)) != v for k, v in wanted.items()):
            continue
        path = Path(marker)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{point} {where}\n")
        raise InjectedFault(f"injected fault at {point} ({', '.join(f'{k}={v}' for k, v in where.items())})")


def env() -> dict[str, str]:
    """``{RECEMB_FAULTS: rules}`` when set, else ``{}``: what to hand on to worker processes."""
    spec = os.environ.get(ENV)
    return {ENV: spec} if spec else {}


@contextlib.contextmanager
def inject(point: str, marker: str | os.PathLike, **where: object) -> Iterator[Path]:
    """``with inject("train.epoch", tmp / "m", epoch=3):`` - add a rule for the block; yields the marker path."""
    rule = f"{point}{'@' if where else ''}{','.join(f'{k}={v}' for k, v in where.items())}:{marker}"
    old = os.environ.get(ENV)
    os.environ[ENV] = f"{old};{rule}" if old else rule
    try:
        yield Path(marker)
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
