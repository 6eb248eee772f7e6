"""The model registry: one row per embedding model, read by every place that lists models.

The CLI (``recemb train NAME``), the pipeline (one training stage per model),
``eval.models`` (models fitted on each protocol's train split), ``jobs/``
(``python -m jobs.train --model NAME``) and the report all read
:data:`MODELS`. Adding a model is one package under ``recemb/models/``, one
module under ``recemb/train/`` and one row here (docs/adding-a-model.md).

A row holds callables that import their model lazily, so that reading the
registry (every CLI start) loads no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from recemb.config import PipelineConfig
from recemb.errors import ConfigError
from recemb.models.item2vec.config import SEARCH_SPACE as ITEM2VEC_SPACE
from recemb.models.sequence.config import SEARCH_SPACE as SEQUENCE_SPACE
from recemb.models.two_tower.config import SEARCH_SPACE as TWO_TOWER_SPACE

if TYPE_CHECKING:
    from recemb.models.protocol import EmbeddingModel


@dataclass(frozen=True)
class Variant:
    """An evaluation-only variant of a model: settings changed over its configured section.

    Attributes:
        update: section keys -> values (one level of nesting, e.g. ``{"content": {"text": True}}``).
        options: extra keyword arguments of the model's constructor (e.g. a control switch).
    """

    update: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: registry name: ``eval.models`` entry, pipeline stage, output folder ``<run>/<name>``.
        section: its config section (``cfg.<section>``).
        cli: the ``recemb train`` argument (``two-tower``).
        summary: one line for ``--help``.
        build: ``(cfg, variant) -> a fresh, unfitted model`` with the config's settings.
        train: the training stage: ``cfg -> <run>/<name>`` (trained on all prepared events).
        reads: further config sections the trained artifact depends on (stage fingerprints).
        content_only: True when the model only runs on ``eval.content_protocols``
            (it exists for cold items and costs more than one fit).
        variants: evaluation-only variants by name; they run on ``eval.content_protocols``.
        warm_only: True when the model is skipped on ``eval.content_protocols`` (an id-only
            model whose cold-item row would only restate that it has no cold vectors).
        search_space: what ``recemb tune`` varies (recemb.tune.space), declared beside the
            model's config; empty: the model is tuned only with ``tune.spaces.<name>``.
    """

    name: str
    section: str
    cli: str
    summary: str
    build: Callable[[PipelineConfig, Variant], EmbeddingModel]
    train: Callable[[PipelineConfig], Path]
    reads: tuple[str, ...] = ()
    content_only: bool = False
    variants: Mapping[str, Variant] = field(default_factory=dict)
    warm_only: bool = False
    search_space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section_config(self, cfg: PipelineConfig, variant: Variant = Variant()) -> Any:
        """The model's section of ``cfg`` with ``variant.update`` applied (nested sections merged)."""
        section = getattr(cfg, self.section)
        if not variant.update:
            return section
        update: dict[str, Any] = {}
        for key, value in variant.update.items():
            current = getattr(section, key)
            update[key] = current.model_copy(update=value) if isinstance(value, Mapping) else value
        return section.model_copy(update=update)


# ----------------------------------------------------------------------------- models
def _build_item2vec(cfg: PipelineConfig, variant: Variant) -> EmbeddingModel:
    from recemb.models.item2vec.model import Item2Vec

    return Item2Vec(MODELS["item2vec"].section_config(cfg, variant), **variant.options)


def _train_item2vec(cfg: PipelineConfig) -> Path:
    from recemb.train.item2vec import train_item2vec

    return train_item2vec(cfg.item2vec, cfg.ray, cfg.prepared_dir, cfg.run_dir)


def _build_two_tower(cfg: PipelineConfig, variant: Variant) -> EmbeddingModel:
    from recemb.models.two_tower.model import TwoTower

    return TwoTower(MODELS["two_tower"].section_config(cfg, variant), **variant.options)


def _train_two_tower(cfg: PipelineConfig) -> Path:
    from recemb.train.two_tower import train_two_tower

    return train_two_tower(
        cfg.two_tower, cfg.ray, cfg.prepared_dir, cfg.run_dir, cfg.content_cache_dir(cfg.two_tower.content)
    )


def _build_content(cfg: PipelineConfig, variant: Variant) -> EmbeddingModel:
    from recemb.models.content.model import ContentModel

    return ContentModel(MODELS["content"].section_config(cfg, variant), cfg.item2vec, **variant.options)


def _train_content(cfg: PipelineConfig) -> Path:
    from recemb.train.content import train_content

    return train_content(cfg.content, cfg.ray, cfg.prepared_dir, cfg.run_dir, cfg.content_cache_dir(cfg.content))


def _build_sequence(cfg: PipelineConfig, variant: Variant) -> EmbeddingModel:
    from recemb.models.sequence.model import SequenceModel

    return SequenceModel(MODELS["sequence"].section_config(cfg, variant), **variant.options)


def _train_sequence(cfg: PipelineConfig) -> Path:
    from recemb.train.sequence import train_sequence

    return train_sequence(cfg.sequence, cfg.ray, cfg.prepared_dir, cfg.run_dir)


_REGISTRY = (
    ModelSpec(
        name="item2vec",
        section="item2vec",
        cli="item2vec",
        summary="skip-gram / CBOW with negative sampling over sessions",
        build=_build_item2vec,
        train=_train_item2vec,
        reads=("ray",),
        search_space=ITEM2VEC_SPACE,
    ),
    ModelSpec(
        name="two_tower",
        section="two_tower",
        cli="two-tower",
        summary="torchrec user and item towers, in-batch softmax with logQ correction",
        build=_build_two_tower,
        train=_train_two_tower,
        reads=("ray",),
        search_space=TWO_TOWER_SPACE,
        variants={
            "two_tower-text": Variant(update={"content": {"text": True, "image": False}}),
            "two_tower-image": Variant(update={"content": {"text": False, "image": True}}),
            "two_tower-both": Variant(update={"content": {"text": True, "image": True}}),
        },
    ),
    ModelSpec(
        name="content",
        section="content",
        cli="content",
        summary="text / category / image encoders aligned to the run's item2vec (cold items)",
        build=_build_content,
        train=_train_content,
        reads=("item2vec", "ray"),
        content_only=True,
        variants={
            "content-text": Variant(update={"text": True, "category": True, "image": False}),
            "content-image": Variant(update={"text": False, "category": False, "image": True}),
            "content-both": Variant(update={"text": True, "category": True, "image": True}),
            "content-random": Variant(options={"random_control": True}),
        },
    ),
    ModelSpec(
        name="sequence",
        section="sequence",
        cli="sequence",
        summary="causal Transformer over recent items, every position a target, with a repeat path",
        build=_build_sequence,
        train=_train_sequence,
        reads=("ray",),
        warm_only=True,
        search_space=SEQUENCE_SPACE,
        variants={"sequence-category": Variant(update={"item_categories": True})},
    ),
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _REGISTRY})


def model_spec(name: str) -> ModelSpec:
    """The row of ``name`` (a model's registry or CLI name); a clear error listing the models otherwise."""
    for spec in MODELS.values():
        if name in (spec.name, spec.cli):
            return spec
    raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(MODELS)}")


def eval_entry(name: str) -> tuple[ModelSpec, Variant, bool]:
    """``(spec, variant, content_only)`` of an ``eval.models`` entry: a model or one of its variants."""
    for spec in MODELS.values():
        if name == spec.name:
            return spec, Variant(), spec.content_only
        if name in spec.variants:
            return spec, spec.variants[name], True
    names = [n for spec in MODELS.values() for n in (spec.name, *spec.variants)]
    raise ConfigError(f"eval.models: unknown model {name!r}; choose from {names}")
