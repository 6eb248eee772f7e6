"""Progress of long stages: a bar on a terminal, a line now and then in logs, a summary at the end.

    with Progress("two_tower", total=steps, unit="step") as bar:
        for ...:
            bar.update(1, loss=0.31)
            bar.note("two_tower epoch 1: loss 0.31")   # printed above the bar
        bar.summary = "4 epochs, val recall@20 0.21"

On a terminal (stderr is a TTY) this draws a tqdm bar; anywhere else (job
logs, Ray workers, CI) it logs one line every ``interval`` seconds with the
count, rate and ETA, so a log shows that a long stage is alive without
being flooded. Either way, leaving the block logs one summary line with
the count, time and rate. ``RECEMB_PROGRESS=bars|lines|off`` forces a mode,
``RECEMB_PROGRESS_INTERVAL`` sets the seconds between lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("recemb.progress")

MODES = ("bars", "lines", "off")
DEFAULT_INTERVAL = 30.0  # seconds between log lines; $RECEMB_PROGRESS_INTERVAL overrides


def _mode(stream: TextIO) -> str:
    forced = os.environ.get("RECEMB_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    try:
        return "bars" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or stream-less file
        return "lines"


def _fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


class Progress:
    """Counts work done towards ``total`` (None = unknown) and reports it (module doc).

    Args:
        what: the name shown on the bar and at the start of every line.
        total: units of work expected.
        unit: what one unit is ("step", "epoch", "model", ...).
        interval: seconds between log lines when there is no terminal.
        enabled: False = silent (e.g. every Ray rank but 0).
        stream: where the bar is drawn (default stderr).
    """

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "it",
        *,
        interval: float | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        if interval is None:
            interval = float(os.environ.get("RECEMB_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
        self.what, self.total, self.unit, self.interval = what, total, unit, interval
        self.stream = stream or sys.stderr
        self.mode = _mode(self.stream) if enabled else "off"
        self.done = 0
        self.summary = ""  # set by the caller; appended to the closing line
        self._postfix: dict[str, Any] = {}
        self._t0 = self._last = time.monotonic()
        self._bar = None
        if self.mode == "bars":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit, file=self.stream, dynamic_ncols=True, leave=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more units done; ``postfix`` (e.g. ``loss=0.3``) is shown beside the count."""
        self.done += n
        if postfix:
            self._postfix = postfix
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: fmt_number(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)
        elif self.mode == "lines" and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            log.info("%s", self.line())

    def note(self, message: str) -> None:
        """A message that must be seen (an epoch's metrics): above the bar, or as a log line."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        elif self.mode == "lines":
            log.info("%s", message)
            self._last = time.monotonic()  # the note already says the stage is alive

    def line(self) -> str:
        """``what: done/total unit (pct) rate, ETA, postfix``."""
        elapsed = time.monotonic() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.what}: {self.done}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts.append(f"({100 * self.done / self.total:.0f}%)")
        parts.append(f"{rate:,.1f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_fmt_seconds((self.total - self.done) / rate)}")
        parts += [f"{k} {fmt_number(v)}" for k, v in self._postfix.items()]
        return " ".join(parts)

    def close(self, failed: bool = False) -> None:
        """Remove the bar and log the one summary line (once)."""
        if self.mode == "closed":
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.mode != "off":
            elapsed = time.monotonic() - self._t0
            state = "failed after" if failed else "done:"
            rate = f" ({self.done / elapsed:,.1f} {self.unit}/s)" if elapsed > 0 and self.done else ""
            tail = f"; {self.summary}" if self.summary else ""
            log.info("%s %s %d %s in %s%s%s", self.what, state, self.done, self.unit, _fmt_seconds(elapsed), rate, tail)
        self.mode = "closed"


def fmt_number(v: Any) -> str:
    """A metric for a progress line: ``14,010`` for large floats, 4 significant digits for small ones."""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)
