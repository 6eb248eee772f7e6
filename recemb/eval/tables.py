"""Plain-text tables of evaluation results, one per protocol and dataset.

Input is what :func:`recemb.eval.evaluate.evaluate` returns (or a list of
such dicts, one per dataset): rows are models, columns the metrics in the
order the protocol runner reports them, then ``queries``, ``fit_s`` and
``score_s``. Plain aligned text, so it reads the same in a terminal, a log
and a Markdown code block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TITLES = {"ml": "P-ML", "sess": "P-SESS", "imp": "P-IMP", "cold": "P-COLD"}
TRAILING = ("queries", "fit_s", "score_s")
# Kept in metrics.json but left out of the printed tables unless asked for:
# hit rate equals recall with one target per query, and the rest is bookkeeping.
HIDDEN_PREFIXES = ("hit_rate@", "mean_pop_percentile@", "n_impressions", "n_skipped", "refits", "folds")


def _shown(key: str, columns: Sequence[str] | None) -> bool:
    if columns is not None:
        return key in columns
    return not key.startswith(HIDDEN_PREFIXES)


def _cell(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and key.startswith("n_") and value.is_integer():
        return str(int(value))  # counts that a runner reports as floats
    if isinstance(value, float):
        return f"{value:.2f}" if key.endswith("_s") else f"{value:.4f}"
    return str(value)


def format_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """One aligned table: a title line, a header, one line per row.

    Columns are ``model``, then every other key in first-seen order (only
    those in ``columns`` when given, else all but :data:`HIDDEN_PREFIXES`) with ``queries``, ``fit_s`` and
    ``score_s`` last; a row missing a column shows ``-``.
    """
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k != "model" and k not in TRAILING and k not in keys and _shown(k, columns)]
    keys = ["model", *keys, *[k for k in TRAILING if any(k in r for r in rows)]]
    cells = [keys] + [[_cell(k, r[k]) if k in r else "-" for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]

    def line(values: list[str]) -> str:
        # Model names left-aligned, numbers right-aligned.
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    rule = "-" * len(line(cells[0]))
    return "\n".join([title, rule, line(cells[0]), rule, *(line(c) for c in cells[1:]), rule])


def format_tables(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> str:
    """All tables of one or several evaluation results, separated by blank lines.

    ``columns`` keeps only those metric columns (e.g. ``["recall@20", "mrr@20"]``).
    """
    many = [results] if isinstance(results, Mapping) else list(results)
    blocks = []
    for res in many:
        dataset = res.get("dataset", "?")
        for protocol, part in res.get("protocols", {}).items():
            split = part.get("split", {})
            notes = [f"catalogue {split['catalogue']} items"] if "catalogue" in split else []
            if split.get("folds", 1) > 1:
                notes.append(f"pooled over {split['folds']} folds")
            if "exclude_seen" in split:
                notes.append("seen items excluded" if split["exclude_seen"] else "seen items rankable")
            extra = f" ({', '.join(notes)})" if notes else ""
            title = f"{TITLES.get(protocol, protocol)} · {dataset}{extra}"
            blocks.append(format_table(title, part["rows"], columns))
        for protocol, why in res.get("skipped", {}).items():
            blocks.append(f"{TITLES.get(protocol, protocol)} · {dataset}: skipped ({why})")
    return "\n\n".join(blocks) if blocks else "(no results)"
