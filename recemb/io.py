"""Atomic file writes and checksums.

Nothing recemb writes is ever half-written: every file is written to a temp
path beside its destination and renamed into place (rename is atomic on POSIX
within one file system), so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is racy across threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(path: Path, base: int) -> None:
    """Give a temp file/dir the mode a plain ``open``/``mkdir`` would have (mkstemp uses 0600/0700)."""
    os.chmod(path, base & ~_umask())


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in ``dest``'s folder; rename it onto ``dest`` on success.

    On an exception the temp file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            _default_mode(tmp_path, 0o666)
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory beside ``dest``; move it onto ``dest`` on success.

    An existing ``dest`` is replaced only after the new one is complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        _default_mode(tmp, 0o777)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json_object(path: str | os.PathLike, error: type[Exception], fix: str) -> dict[str, Any]:
    """Read a JSON object (a manifest); on bad JSON or a non-object raise ``error`` ending in ``fix``."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object; {fix}")
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_checked_manifest(
    path: str | os.PathLike,
    error: type[Exception],
    fix: str,
    *,
    schema_version: int,
    required: Mapping[str, type],
    oldest: int = 1,
) -> dict[str, Any]:
    """Read an artifact manifest and check its version, required keys' types and metric.

    Args:
        path: the ``manifest.json``.
        error, fix: the exception raised and the fix every message ends with.
        schema_version: the newest version this recemb writes and reads.
        required: key -> type every manifest must hold (``int`` never accepts a bool).
        oldest: the oldest version still read (older ones need a re-export).
    """
    from recemb.vectors import METRICS

    m = read_json_object(path, error, fix)
    version = m.get("schema_version")
    if version is None:
        raise error(f"{path}: no schema_version (an old or foreign export); {fix}")
    if not isinstance(version, int) or isinstance(version, bool) or version < oldest:
        raise error(
            f"{path}: unknown or unsupported schema_version {version!r} "
            f"(this recemb reads {oldest}..{schema_version}); {fix}"
        )
    if version > schema_version:
        raise error(
            f"{path}: schema_version {version} was written by a newer recemb (this one reads {schema_version}); "
            f"upgrade recemb, or {fix}"
        )
    for key, typ in required.items():
        v = m.get(key)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise error(f"{path}: key {key!r} is missing or not a {typ.__name__} (got {v!r}); {fix}")
    if "metric" in required and m["metric"] not in METRICS:
        raise error(f"{path}: metric {m['metric']!r} is not one of {METRICS}; {fix}")
    return m


def load_checked_array(
    path: str | os.PathLike,
    dtype: Any,
    shape: tuple[int, ...],
    error: type[Exception],
    fix: str,
    sha256: str | None = None,
    note: str = "",
) -> Any:
    """A ``.npy`` file memory-mapped read-only, after checking it is there, readable (no pickles),
    of ``dtype`` and ``shape`` and, with ``sha256``, unchanged; else ``error`` naming the file and ``fix``."""
    import numpy as np

    f = Path(path)
    if not f.is_file():
        raise error(f"{f}: missing{note}; {fix}")
    try:
        a = np.load(f, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise error(f"{f}: not a readable .npy file ({e}); {fix}") from None
    if a.dtype != dtype or a.shape != tuple(shape):
        raise error(
            f"{f}: {a.dtype} {list(a.shape)}, but the manifest says {np.dtype(dtype)} {list(shape)}; "
            f"the files do not belong together; {fix}"
        )
    if sha256 is not None and sha256_file(f) != sha256:
        raise error(f"{f}: sha256 does not match the manifest; the file was changed after export; {fix}")
    return a
