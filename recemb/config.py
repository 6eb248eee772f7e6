"""Typed pipeline configuration: one YAML file, one section per stage.

A pipeline YAML looks like ``configs/quickstart.yaml``. Each package owns its
section (``recemb/data/config.py``, ``recemb/eval/config.py``, ...), a
:class:`recemb.section.Section`: frozen, with ``extra="forbid"``, so a misspelt
key is an error that names the file and the key, not a silently ignored
setting. This module only assembles them into :class:`PipelineConfig`; library
code takes its own section, so only stages, the CLI, jobs and serving import it. Values can be
overridden from the command line with ``--set section.key=value`` (the value
is parsed as YAML: ``--set data.synth.users=500``, ``--set eval.k=[10,20]``).
The resolved config is stored in every artifact's manifest.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import Field

from recemb.data.config import DataConfig
from recemb.errors import ConfigError
from recemb.eval.config import EvalConfig
from recemb.index.config import ExportConfig
from recemb.models.content.config import ContentConfig, ContentParts
from recemb.models.item2vec.config import Item2VecConfig
from recemb.models.sequence.config import SequenceConfig
from recemb.models.two_tower.config import TwoTowerConfig
from recemb.report.config import ReportConfig
from recemb.retrieval.candidates_config import CandidatesConfig
from recemb.retrieval.serve_config import ServeConfig
from recemb.section import Section, config_to_dict
from recemb.train.ray_config import RayTrainConfig
from recemb.tune.config import TuneConfig

# config_to_dict is defined with Section (a leaf module) and re-exported for stage-level callers.
__all__ = [
    "PipelineConfig",
    "RunConfig",
    "build_config",
    "config_to_dict",
    "load_config",
    "merge_tree",
    "parse_overrides",
]


class RunConfig(Section):
    """The ``run:`` section: where a run's artifacts live (``<dir>/<name>``)."""

    name: str = "quickstart"
    dir: str = "runs"  # the run directory is <dir>/<name>

    @property
    def path(self) -> Path:
        return Path(self.dir) / self.name


class PipelineConfig(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    item2vec: Item2VecConfig = Item2VecConfig()
    two_tower: TwoTowerConfig = TwoTowerConfig()
    content: ContentConfig = ContentConfig()
    sequence: SequenceConfig = SequenceConfig()
    ray: RayTrainConfig = RayTrainConfig()  # how training stages run: in-process or Ray Train workers
    export: ExportConfig = ExportConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    serve: ServeConfig = ServeConfig()
    report: ReportConfig = ReportConfig()
    tune: TuneConfig = TuneConfig()  # `recemb tune`: search on the validation split
    # Stages that `recemb pipeline` runs, in order, when they exist.
    stages: list[str] = Field(default_factory=lambda: ["data", "evaluate"])

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def prepared_dir(self) -> Path:
        return Path(self.data.prepared) if self.data.prepared else self.run_dir / "data"

    def content_cache_dir(self, parts: ContentParts | None = None) -> Path:
        """Where frozen image / sentence features are cached: ``parts.cache_dir``, else ``<run>/cache``."""
        parts = parts or self.content
        return Path(parts.cache_dir) if parts.cache_dir else self.run_dir / "cache"


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set {dotted!r}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def merge_tree(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in (nested mappings merged, values replaced); a new dict."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tree(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: no such {what}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run:, data:, eval:)")
    return tree


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]`` (values parsed as YAML)."""
    out = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set eval.seed=1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        out.append((key.strip(), value))
    return out


def _explain(e: pydantic.ValidationError, source: str) -> ConfigError:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r} (check the spelling; see configs/quickstart.yaml for the keys)")
        else:
            lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(lines))


def build_config(
    tree: dict[str, Any] | None, overrides: list[str] | None = None, source: str = "<config>"
) -> PipelineConfig:
    """Validate a config tree (plus ``--set`` overrides) into a :class:`PipelineConfig`."""
    if tree is not None and not isinstance(tree, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    tree = copy.deepcopy(tree or {})
    for key, value in parse_overrides(overrides):
        _set_path(tree, key, value, source)
    try:
        return PipelineConfig.model_validate(tree)
    except pydantic.ValidationError as e:
        raise _explain(e, source) from None


def load_config(
    path: str | os.PathLike, overrides: list[str] | None = None, overlays: list[str | os.PathLike] | None = None
) -> PipelineConfig:
    """Read a pipeline YAML, merge ``overlays`` (YAML files, in order; e.g. ``recemb tune``'s
    ``best.yaml``), apply ``--set`` overrides, validate. An overlay's unknown key is an error."""
    path = Path(path)
    tree = _read_yaml(path, "config file; the shipped ones are in configs/")
    source = str(path)
    for overlay in overlays or []:
        tree = merge_tree(tree, _read_yaml(Path(overlay), "overlay file"))
        source += f" + {overlay}"
    return build_config(tree, overrides, source)
