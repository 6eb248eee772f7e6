"""Search spaces: which settings a model's trials vary, and how a trial's settings become a config.

Each model declares ``SEARCH_SPACE`` beside its config (e.g.
``recemb/models/item2vec/config.py``) and the registry row carries it; the
``tune.spaces.<model>`` section replaces or adds dimensions. A space maps a
setting to a dimension:

=====================================  ==========================================
``{"uniform": [lo, hi]}``              float, uniform
``{"loguniform": [lo, hi]}``           float, uniform in log space (lo > 0)
``{"randint": [lo, hi]}``              int, both ends included
``{"lograndint": [lo, hi]}``           int, log-uniform, both ends included
``{"choice": [v1, v2, ...]}``          one of the values
=====================================  ==========================================

A setting is a field of the model's config section (``window``, or a nested
one such as ``content.text``), or ``eval.<field>`` for the evaluation's own
settings of that model (``eval.query``: how item2vec's pooled query weighs a
history). Choices of how a query pools the item vectors (``eval.query``,
``eval.query_last_n``) change no training, so they are not drawn per trial:
every trial scores all their combinations and keeps its best
(:func:`query_grid`), which costs scoring time only. A trial's settings are written into the pipeline config and
validated like any config (:func:`apply_params`), and the best ones become
the ``best.yaml`` overlay (:func:`overlay_tree`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from recemb.config import PipelineConfig, build_config, config_to_dict, merge_tree
from recemb.errors import ConfigError
from recemb.stages.registry import ModelSpec

Space = dict[str, dict[str, Any]]
KINDS = ("uniform", "loguniform", "randint", "lograndint", "choice")


def model_space(spec: ModelSpec, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Space:
    """The declared space of ``spec`` with ``overrides`` (``tune.spaces.<model>``) merged over it, checked."""
    space: Space = {key: dict(dim) for key, dim in spec.search_space.items()}
    for key, dim in (overrides or {}).items():
        space[key] = dict(dim)
    if not space:
        raise ConfigError(
            f"tune: model {spec.name!r} declares no search space; give one in tune.spaces.{spec.name} "
            "(e.g. {epochs: {randint: [5, 50]}})"
        )
    for key, dim in space.items():
        _check_dimension(spec.name, key, dim)
    return space


def _check_dimension(model: str, key: str, dim: Mapping[str, Any]) -> None:
    where = f"tune.spaces.{model}.{key}"
    if len(dim) != 1 or next(iter(dim)) not in KINDS:
        raise ConfigError(f"{where}: expected one of {KINDS} as the only key, e.g. {{uniform: [0, 1]}}; got {dim!r}")
    kind, values = next(iter(dim.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} needs a non-empty list, got {values!r}")
    if kind == "choice":
        return
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {values!r}")
    lo, hi = values
    if not lo <= hi:
        raise ConfigError(f"{where}: low {lo} is above high {hi}")
    if kind.startswith("log") and lo <= 0:
        raise ConfigError(f"{where}: {kind} needs low > 0, got {lo}")
    if kind.endswith("randint") and not (float(lo).is_integer() and float(hi).is_integer()):
        raise ConfigError(f"{where}: {kind} needs whole numbers, got {values!r}")


def to_ray(space: Space) -> dict[str, Any]:
    """Ray Tune samplers of a space (Ray's integer bounds exclude the top; ours include it)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dim in space.items():
        kind, values = next(iter(dim.items()))
        if kind == "choice":
            out[key] = tune.choice(values)
        elif kind == "uniform":
            out[key] = tune.uniform(*values)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*values)
        elif kind == "randint":
            out[key] = tune.randint(int(values[0]), int(values[1]) + 1)
        else:
            out[key] = tune.lograndint(int(values[0]), int(values[1]) + 1)
    return out


def sample(space: Space, rng: random.Random) -> dict[str, Any]:
    """One setting drawn from ``space`` as :func:`to_ray`'s samplers draw it (floats to 6 significant digits)."""
    out: dict[str, Any] = {}
    for key, dim in space.items():
        kind, values = next(iter(dim.items()))
        if kind == "choice":
            out[key] = rng.choice(values)
            continue
        lo, hi = values
        if kind == "randint":
            out[key] = rng.randint(int(lo), int(hi))
        elif kind == "lograndint":  # log-uniform over [lo, hi + 1), floored: every whole number has its share
            out[key] = min(int(hi), int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))
        elif kind == "loguniform":
            out[key] = _plain(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        else:
            out[key] = _plain(rng.uniform(lo, hi))
    return out


def contains(space: Space, params: Mapping[str, Any]) -> bool:
    """True when every value of ``params`` lies in its dimension (model-based searchers need it)."""
    for key, value in params.items():
        kind, values = next(iter(space[key].items()))
        if kind == "choice":
            if value not in values:
                return False
        elif not (isinstance(value, (int, float)) and values[0] <= value <= values[1]):
            return False
    return True


QUERY_KEYS = ("eval.query", "eval.query_last_n")


def split_space(space: Space) -> tuple[Space, Space]:
    """``(drawn per trial, scored inside every trial)``: query-pooling choices go to the second."""
    inside = {k: d for k, d in space.items() if k in QUERY_KEYS and "choice" in d}
    return {k: d for k, d in space.items() if k not in inside}, inside


def query_grid(inside: Space) -> tuple[dict[str, Any], ...]:
    """Every combination of the in-trial choices (``({},)`` when there are none)."""
    grid: list[dict[str, Any]] = [{}]
    for key, dim in inside.items():
        grid = [{**g, key: value} for g in grid for value in dim["choice"]]
    return tuple(grid)


def _path(spec: ModelSpec, key: str) -> list[str]:
    parts = key.split(".")
    return parts if parts[0] == "eval" else [spec.section, *parts]


def overlay_tree(spec: ModelSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"item2vec": {"window": 3}, "eval": {"query": "last"}}`` from a trial's flat settings."""
    tree: dict[str, Any] = {}
    for key, value in params.items():
        node = tree
        *parents, leaf = _path(spec, key)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _plain(value)
    return tree


def _plain(value: Any) -> Any:
    """numpy scalars (what samplers give) -> Python ones, so the overlay is plain YAML."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")  # 6 significant digits: readable YAML, far below any effect
    return value


def apply_params(cfg: PipelineConfig, spec: ModelSpec, params: Mapping[str, Any]) -> PipelineConfig:
    """``cfg`` with a trial's settings, validated like a config file (clear errors for bad keys/values)."""
    tree = merge_tree(config_to_dict(cfg), overlay_tree(spec, params))
    return build_config(tree, source=f"tune trial of {spec.name}")


def defaults(cfg: PipelineConfig, spec: ModelSpec, space: Space) -> dict[str, Any]:
    """The configured value of every setting of ``space`` (the first trial evaluates them)."""
    tree = config_to_dict(cfg)
    out = {}
    for key in space:
        node: Any = tree
        for part in _path(spec, key):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"tune.spaces.{spec.name}: {key!r} is not a setting of {spec.section} or eval")
            node = node[part]
        out[key] = node
    return out
