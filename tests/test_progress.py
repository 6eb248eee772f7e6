"""Progress reporting (recemb.progress): bars on a terminal, periodic lines in logs, one summary."""

from __future__ import annotations

import io
import logging

import pytest

from recemb.progress import Progress, fmt_number


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_notes_above_it(monkeypatch, caplog):
    monkeypatch.delenv("RECEMB_PROGRESS", raising=False)
    out = _Tty()
    with caplog.at_level(logging.INFO, logger="recemb.progress"):
        with Progress("train", 4, "step", stream=out) as p:
            assert p.mode == "bars"
            for _ in range(4):
                p.update(1, loss=0.25)
            p.note("epoch 1: loss 0.25")
            p.summary = "1 epoch"
    drawn = out.getvalue()
    assert "train" in drawn and "4/4" in drawn and "epoch 1: loss 0.25" in drawn
    # The bar is gone; the summary is one log line.
    assert [r.getMessage() for r in caplog.records] == [caplog.records[0].getMessage()]
    assert caplog.records[0].getMessage().startswith("train done: 4 step in") and "; 1 epoch" in caplog.text


def test_a_log_gets_lines_at_most_every_interval(monkeypatch, caplog):
    monkeypatch.delenv("RECEMB_PROGRESS", raising=False)
    clock = iter(range(0, 1000, 10))  # each call to monotonic() advances 10 s
    monkeypatch.setattr("recemb.progress.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="recemb.progress"):
        with Progress("evaluate", 6, "model", interval=25, stream=io.StringIO()) as p:
            assert p.mode == "lines"
            for _ in range(6):
                p.update(1)
    lines = [r.getMessage() for r in caplog.records]
    # Every clock reading is 10 s later: updates 3 and 5 find 25 s passed since the last line.
    assert len(lines) == 3, lines
    assert lines[0].startswith("evaluate: 3/6 model (50%)") and "ETA" in lines[0]
    assert lines[-1].startswith("evaluate done: 6 model in")


def test_failure_is_said_and_off_is_silent(monkeypatch, caplog):
    monkeypatch.setenv("RECEMB_PROGRESS", "lines")
    with caplog.at_level(logging.INFO, logger="recemb.progress"):
        with pytest.raises(RuntimeError):
            with Progress("candidates", 3, "partition"):
                raise RuntimeError("worker died")
        with Progress("rank 1", 3, enabled=False) as quiet:
            quiet.update(3)
            quiet.note("not shown")
    assert len(caplog.records) == 1 and "candidates failed after 0 partition" in caplog.text


def test_numbers_read_well():
    assert fmt_number(14010.3) == "14,010" and fmt_number(0.24389) == "0.2439" and fmt_number(7) == "7"
