"""Converters from raw public datasets (and generic tables) to canonical :class:`Dataset` s.

One module per source; :func:`prepare_source` is the single entry point the
CLI calls. Where a source's raw folder lives by default is read from its
dataset card (``datasets/<name>.yaml``: ``local_folder`` under
:func:`recemb.data.paths.data_dir`).

=================  ==========================================================
name               raw input
=================  ==========================================================
movielens-100k     GroupLens ``u.data``/``u.item``/``u.user`` or RecBole atomic files
ml-100k-content    alias: movielens-100k with TMDB overviews + posters (required)
yoochoose          session-rec's ``yoochoose-clicks-100k_{train_full,test}.txt``
mind               ``behaviors.tsv`` + ``news.tsv``
table              any CSV/Parquet files described by ``TableSourceConfig``
=================  ==========================================================
"""

from __future__ import annotations

from pathlib import Path

from recemb.data.cards import load_card
from recemb.data.config import TableSourceConfig
from recemb.data.dataset import Dataset
from recemb.data.paths import data_dir
from recemb.data.sources.mind import read_mind
from recemb.data.sources.movielens import read_movielens
from recemb.data.sources.table import read_table_source
from recemb.data.sources.yoochoose import read_yoochoose
from recemb.errors import DataValidationError

SOURCE_NAMES: tuple[str, ...] = ("movielens-100k", "yoochoose", "mind", "table")
# Names accepted by prepare_source besides SOURCE_NAMES -> (card name, needs content).
ALIASES: dict[str, str] = {"ml-100k-content": "movielens-100k"}
CONTENT_FOLDER = "ml-100k-content"  # under data_dir(), beside the card's ml-100k folder

_READERS = {"movielens-100k": read_movielens, "yoochoose": read_yoochoose, "mind": read_mind}

__all__ = ["ALIASES", "SOURCE_NAMES", "prepare_source"]


def _source_dir(name: str, source_dir: Path | None) -> Path:
    folder = Path(source_dir) if source_dir is not None else load_card(name).local_path
    if not folder.is_dir():
        how = (
            "the --source folder"
            if source_dir is not None
            else f"the default folder (card {name!r}: data_dir()/local_folder)"
        )
        raise DataValidationError(
            f"{folder}: no such folder ({how}). Download the raw files with `recemb data fetch {name}` "
            f"and pass that folder (data.path / --source DIR), or set RECEMB_DATA_DIR to where local copies live"
        )
    return folder


def _content_dir(content_dir: Path | None, required: bool) -> Path | None:
    if content_dir is None:
        default = data_dir() / CONTENT_FOLDER
        if default.is_dir():
            return default
        if required:
            raise DataValidationError(
                f"{default}: no such folder; ml-100k-content needs items.csv and posters/ "
                f"(pass content_dir, or use source movielens-100k for ratings without content)"
            )
        return None
    content_dir = Path(content_dir)
    if not (content_dir / "items.csv").exists():
        raise DataValidationError(f"{content_dir}: no items.csv here; expected the ml-100k-content folder")
    return content_dir


def prepare_source(
    name: str,
    source_dir: Path | None = None,
    *,
    table: TableSourceConfig | None = None,
    content_dir: Path | None = None,
) -> tuple[Dataset, dict[str, Path]]:
    """Convert raw source ``name`` into a validated :class:`Dataset`.

    Args:
        name: one of :data:`SOURCE_NAMES` or :data:`ALIASES`.
        source_dir: the raw folder; default ``data_dir() / card.local_folder``.
            For ``table``, the folder relative paths in ``table`` resolve against.
        table: the generic table description (required for ``table``).
        content_dir: ML-100K content (items.csv + posters/); default
            ``data_dir()/ml-100k-content`` when that exists. Only for MovieLens.

    Returns:
        ``(dataset, extra_files)``; pass both to
        :func:`recemb.data.dataset.write_dataset` (``extra_files`` maps names in
        the prepared dir, e.g. ``"images"``, to files/folders to copy).

    Raises:
        DataValidationError: unknown name, missing folder, or bad raw data.
    """
    if name == "table":
        if table is None:
            raise DataValidationError(
                "source 'table' needs a data.table section (events: PATH, columns: {...}); see TableSourceConfig"
            )
        ds = read_table_source(table, Path(source_dir) if source_dir is not None else None)
        return ds.validate(), {}
    card_name = ALIASES.get(name, name)
    if card_name not in _READERS:
        raise DataValidationError(f"unknown source {name!r}; expected one of {list(SOURCE_NAMES) + list(ALIASES)}")
    folder = _source_dir(card_name, source_dir)
    if card_name == "movielens-100k":
        ds, extra = read_movielens(folder, _content_dir(content_dir, required=name in ALIASES))
    else:
        ds, extra = _READERS[card_name](folder)
    ds.name = name  # e.g. movielens-100k stays movielens-100k even with default content
    ds.meta["raw_dir"] = str(folder)
    return ds.validate(), extra
