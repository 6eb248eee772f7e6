"""fetch() without internet: a local http.server, file:// URLs, bad sums, a closed port."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from recemb.data import cards
from recemb.data.fetch import fetch
from recemb.data.paths import data_dir
from recemb.errors import ConfigError, DatasetFetchError
from recemb.io import sha256_file

FILES = {"a.txt": b"alpha\n", "b.tsv": b"x\ty\n1\t2\n"}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _card(folder: Path, name: str, *, url: str, sha256: str | None, fmt: str = "zip", files=None) -> None:
    files = {n: _sha(b) for n, b in FILES.items()} if files is None else files
    lines = [
        f"name: {name}", "title: tiny test data", f"url: {url}",
        f"sha256: {repr(sha256) if sha256 else 'null'}", f"archive_format: {fmt}", "local_folder: tiny",
        "files:", *[f"  {n}: '{s}'" for n, s in files.items()],
        "licence: test", "citation: none", "columns: {}", "notes: fixture",
    ]  # fmt: skip
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n")


@pytest.fixture()
def www(tmp_path, monkeypatch):
    """A folder of downloads served on 127.0.0.1:<ephemeral>, and a cards folder."""
    root = tmp_path / "www"
    root.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # a top folder, as ml-100k.zip has
        for n, b in FILES.items():
            z.writestr(f"tiny/{n}", b)
    (root / "tiny.zip").write_bytes(buf.getvalue())
    for n, b in FILES.items():
        (root / n).write_bytes(b)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cards_dir = tmp_path / "cards"
    cards_dir.mkdir()
    monkeypatch.setenv("RECEMB_CARDS_DIR", str(cards_dir))
    yield {"root": root, "base": f"http://127.0.0.1:{server.server_address[1]}", "cards": cards_dir}
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


def test_http_zip_is_checked_unpacked_and_recorded(www, tmp_path):
    zip_sha = sha256_file(www["root"] / "tiny.zip")
    _card(www["cards"], "tiny", url=f"{www['base']}/tiny.zip", sha256=zip_sha)
    dest = tmp_path / "out" / "raw"
    folder = fetch("tiny", dest)
    assert folder == dest / "tiny"
    assert {p.name for p in folder.iterdir()} == set(FILES)
    assert (folder / "b.tsv").read_bytes() == FILES["b.tsv"]
    prov = json.loads((dest / "fetch.json").read_text())
    assert prov["sha256"] == zip_sha and prov["url"].endswith("/tiny.zip")


def test_file_url_mirror_and_tar(www, tmp_path):
    tar_path = tmp_path / "tiny.tar.gz"
    with tarfile.open(tar_path, "w:gz") as t:
        for n, b in FILES.items():
            info = tarfile.TarInfo(n)
            info.size = len(b)
            t.addfile(info, io.BytesIO(b))
    _card(
        www["cards"],
        "tiny",
        url="https://example.invalid/never-used.tgz",
        sha256=sha256_file(tar_path),
        fmt="tar",
    )
    folder = fetch("tiny", tmp_path / "raw", url=tar_path.as_uri())
    assert folder == tmp_path / "raw"  # no top folder in this archive
    assert (folder / "a.txt").read_bytes() == FILES["a.txt"]


def test_files_format_downloads_each_file_and_checks_its_sum(www, tmp_path):
    _card(www["cards"], "tiny", url=www["base"], sha256=None, fmt="files")
    folder = fetch("tiny", tmp_path / "raw")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.tsv", "fetch.json"]
    # A second fetch finds every file with its sum and downloads nothing.
    (www["root"] / "a.txt").unlink()
    assert fetch("tiny", tmp_path / "raw") == folder


def test_sha_mismatch_names_both_sums_and_leaves_nothing(www, tmp_path):
    wrong = "0" * 64
    _card(www["cards"], "tiny", url=f"{www['base']}/tiny.zip", sha256=wrong)
    parent = tmp_path / "out"
    with pytest.raises(DatasetFetchError) as e:
        fetch("tiny", parent / "raw")
    msg = str(e.value)
    assert wrong in msg and sha256_file(www["root"] / "tiny.zip") in msg and "tiny.zip" in msg
    assert not (parent / "raw").exists()
    assert list(parent.iterdir()) == []  # no temp download, no half-unpacked folder


def test_per_file_mismatch_in_files_format(www, tmp_path):
    _card(www["cards"], "tiny", url=www["base"], sha256=None, fmt="files", files={"a.txt": "1" * 64})
    with pytest.raises(
        DatasetFetchError,
        match="a.txt: sha256 mismatch: expected 1{64}, got " + _sha(FILES["a.txt"]),
    ):
        fetch("tiny", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_closed_port_says_host_unreachable_and_how_to_use_a_local_copy(www, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the socket is closed now: nothing listens on that port
    _card(www["cards"], "tiny", url=f"http://127.0.0.1:{port}/tiny.zip", sha256="2" * 64)
    with pytest.raises(DatasetFetchError) as e:
        fetch("tiny", tmp_path / "raw", timeout=5)
    msg = str(e.value)
    assert f"could not reach 127.0.0.1:{port}" in msg
    assert "data.path" in msg and "--source" in msg
    assert not (tmp_path / "raw").exists()


def test_http_404_and_missing_file_url(www, tmp_path):
    _card(www["cards"], "tiny", url=f"{www['base']}/nope.zip", sha256="3" * 64)
    with pytest.raises(DatasetFetchError, match="HTTP 404"):
        fetch("tiny", tmp_path / "raw")
    with pytest.raises(DatasetFetchError, match="could not reach"):
        fetch("tiny", tmp_path / "raw", url=(tmp_path / "absent.zip").as_uri())


def test_archive_member_outside_target_is_refused(www, tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.txt", b"x")
    _card(www["cards"], "tiny", url=evil.as_uri(), sha256=sha256_file(evil))
    with pytest.raises(DatasetFetchError, match="refusing to unpack member '../escape.txt'"):
        fetch("tiny", tmp_path / "d" / "raw")
    assert not (tmp_path / "d" / "escape.txt").exists()


def test_unknown_card_lists_known_ones(www):
    _card(www["cards"], "tiny", url="file:///x", sha256=None)
    with pytest.raises(ConfigError, match=r"no dataset card 'nope'.*\['tiny'\]"):
        fetch("nope")


def test_from_recbole_only_for_movielens(www):
    _card(www["cards"], "tiny", url="file:///x", sha256=None)
    with pytest.raises(DatasetFetchError, match="only provides movielens-100k"):
        fetch("tiny", from_recbole=True)


def test_shipped_cards_match_the_local_copies():
    """Every file sum on the real cards is the sum of the local copy under data_dir()."""
    if not data_dir().is_dir():
        pytest.skip(f"{data_dir()} missing: no local copies to check the cards against")
    shipped = {c.name: c for c in cards.list_cards()}
    assert {"movielens-100k", "yoochoose", "mind"} <= set(shipped)
    for card in shipped.values():
        assert card.url.startswith("https://") and card.licence and card.citation
        for fname, expected in card.files.items():
            assert sha256_file(card.local_path / fname) == expected, (card.name, fname)


@pytest.mark.slow
def test_from_recbole_wheel_converts_to_ml100k(tmp_path):
    """Needs the package index (pip download of recbole==1.2.1, ~2 MB)."""
    from recemb.data.sources import prepare_source

    try:
        folder = fetch("movielens-100k", tmp_path / "raw", from_recbole=True, timeout=30)
    except DatasetFetchError as e:
        pytest.skip(f"package index unreachable: {e}")
    assert (folder / "ml-100k.inter").exists()
    ds, _ = prepare_source("movielens-100k", folder, content_dir=None)
    assert ds.meta["layout"] == "recbole"
    assert (ds.events.height, ds.events["user_id"].n_unique(), ds.items.height) == (
        100_000,
        943,
        1_682,
    )
