"""Dataset cards: one YAML per public dataset in ``datasets/`` (see datasets/README.md).

A card says where a dataset comes from (download URL and its sha256), under
which terms it may be used, how its columns map onto the canonical tables
(DESIGN.md §2), which local folder under :func:`recemb.data.paths.data_dir`
holds a copy, the sha256 of each raw file, and its known quirks. The
converters in :mod:`recemb.data.sources` and :func:`recemb.data.fetch.fetch`
read cards; nothing else about a dataset is hard-coded elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from recemb.data.paths import cards_dir
from recemb.errors import ConfigError

ARCHIVE_FORMATS = (
    "zip",
    "tar",
    "files",
)  # "files": url is a folder; each name in `files` is fetched


@dataclass(frozen=True)
class DatasetCard:
    """One dataset card.

    ``sha256`` is the sum of the download (``None`` where nobody has recorded
    it); ``files`` maps each raw file name to the sha256 of the local copy the
    project tests against; ``columns`` maps canonical table -> canonical column
    -> a note on where it comes from.
    """

    name: str
    title: str
    url: str
    sha256: str | None
    archive_format: str
    local_folder: str
    files: dict[str, str]
    licence: str
    citation: str
    columns: dict[str, dict[str, str]]
    notes: str
    origin: str = ""  # upstream source when `url` is a mirror or a derived sample
    md5: str | None = None  # the download's md5 where only that is published (checked if sha256 is null)
    path: Path | None = field(default=None, compare=False)  # the YAML it came from

    @property
    def local_path(self) -> Path:
        """Where a local copy is expected: ``data_dir() / local_folder``."""
        from recemb.data.paths import data_dir

        return data_dir() / self.local_folder


_OPTIONAL = ("origin", "md5")
_REQUIRED = [f.name for f in fields(DatasetCard) if f.name not in (*_OPTIONAL, "path")]
_ALLOWED = set(_REQUIRED) | set(_OPTIONAL)


def _parse(path: Path) -> DatasetCard:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: dataset card is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a dataset card must be a mapping of keys ({_REQUIRED})")
    unknown = sorted(set(raw) - _ALLOWED)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in dataset card; allowed: {sorted(_ALLOWED)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"{path}: dataset card lacks key(s) {missing}; see datasets/README.md")
    values: dict[str, Any] = dict(raw)
    if values["archive_format"] not in ARCHIVE_FORMATS:
        raise ConfigError(f"{path}: archive_format {values['archive_format']!r} is not one of {ARCHIVE_FORMATS}")
    sha = values["sha256"]
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ConfigError(f"{path}: sha256 must be 64 hex digits or null, got {sha!r}")
    md5 = values.get("md5")
    if md5 is not None and (not isinstance(md5, str) or len(md5) != 32):
        raise ConfigError(f"{path}: md5 must be 32 hex digits or null, got {md5!r}")
    for key in ("files", "columns"):
        if not isinstance(values[key] or {}, dict):
            raise ConfigError(f"{path}: {key!r} must be a mapping, got {type(values[key]).__name__}")
        values[key] = dict(values[key] or {})
    for fname, fsum in values["files"].items():
        if not isinstance(fsum, str) or len(fsum) != 64:
            raise ConfigError(f"{path}: files.{fname} must be a quoted 64-hex-digit sha256, got {fsum!r}")
    for key in ("title", "url", "local_folder", "licence", "citation", "notes", "origin"):
        values[key] = str(values.get(key) or "").strip()
    return DatasetCard(**values, path=path)


def load_card(name: str) -> DatasetCard:
    """The card ``<cards_dir()>/<name>.yaml``.

    Raises:
        ConfigError: no such card (the message lists the cards there are), or
            a malformed card (names the file and the key).
    """
    path = cards_dir() / f"{name}.yaml"
    if not path.exists():
        known = [c.name for c in list_cards()]
        raise ConfigError(f"no dataset card {name!r} in {cards_dir()}; known cards: {known}")
    card = _parse(path)
    if card.name != name:
        raise ConfigError(f"{path}: card 'name' is {card.name!r}, expected {name!r} (the file name)")
    return card


def list_cards() -> list[DatasetCard]:
    """Every card in :func:`recemb.data.paths.cards_dir`, sorted by name."""
    return [_parse(p) for p in sorted(cards_dir().glob("*.yaml"))]
