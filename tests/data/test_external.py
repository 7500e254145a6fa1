"""Tests for rnnkit.data.external: URLs, the generated human-numbers set, safe extraction, offline errors."""

from __future__ import annotations

import io
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from rnnkit.data.external import URLs, untar_data
from rnnkit.errors import UserError
from rnnkit.utils import L

EVIL_URL = "https://example.invalid/data/evil.tgz"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty rnnkit cache in tmp_path, so nothing is written to the real home folder."""
    monkeypatch.setenv("RNNKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to open a URL."""

    def _refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", _refuse)


def _read_lines(path: Path) -> L:
    lines = L()
    for name in ("train.txt", "valid.txt"):
        with open(path / name) as f:
            lines += L(*f.readlines())
    return lines


def test_urls_match_fastai():
    assert URLs.HUMAN_NUMBERS == "https://s3.amazonaws.com/fast-ai-sample/human_numbers.tgz"
    assert URLs.IMDB == "https://s3.amazonaws.com/fast-ai-nlp/imdb.tgz"
    assert URLs.WIKITEXT_TINY == "https://s3.amazonaws.com/fast-ai-nlp/wikitext-2.tgz"
    assert URLs.MNIST_SAMPLE == "https://s3.amazonaws.com/fast-ai-sample/mnist_sample.tgz"
    assert URLs.IMAGENETTE_160 == "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"


def test_human_numbers_is_generated_in_the_cache_without_network(home, no_network):
    path = untar_data(URLs.HUMAN_NUMBERS)
    assert path == home / "data" / "human_numbers"
    assert [p.name for p in path.ls()] == ["train.txt", "valid.txt"]
    assert not list(path.glob(".*"))  # no temporary files left behind


def test_human_numbers_lines_match_the_seed(home, no_network):
    path = untar_data(URLs.HUMAN_NUMBERS)
    train = (path / "train.txt").read_text().splitlines(keepends=True)
    valid = (path / "valid.txt").read_text().splitlines(keepends=True)
    assert len(train) == 7999 and len(valid) == 1999
    assert train[:5] == ["one \n", "two \n", "three \n", "four \n", "five \n"]
    assert valid[:2] == ["eight thousand one \n", "eight thousand two \n"]
    assert train[-1] == "seven thousand nine hundred ninety nine \n"
    assert valid[-1] == "nine thousand nine hundred ninety nine \n"
    assert train[20] == "twenty one \n"
    assert train[99] == "one hundred \n"
    assert train[1122] == "one thousand one hundred twenty three \n"
    assert "eight thousand \n" not in train + valid


def test_human_numbers_gives_the_chapter_vocab_and_token_count(home, no_network):
    lines = _read_lines(untar_data(URLs.HUMAN_NUMBERS))
    assert len(lines) == 9998
    text = " . ".join(line.strip() for line in lines)
    assert text[:40] == "one . two . three . four . five . six . "
    tokens = text.split(" ")
    assert len(tokens) == 63095
    vocab = L(*tokens).unique()
    assert len(vocab) == 30
    assert list(vocab[:10]) == ["one", ".", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    tens = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    assert list(vocab[-10:]) == [*tens, "hundred", "thousand"]


def test_untar_data_honours_the_base_argument(tmp_path, home, no_network):
    path = untar_data(URLs.HUMAN_NUMBERS, base=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "data" / "human_numbers"
    assert not home.exists()


def test_human_numbers_force_download_regenerates_a_damaged_file(home, no_network):
    path = untar_data(URLs.HUMAN_NUMBERS)
    (path / "train.txt").write_text("garbage\n")
    assert (untar_data(URLs.HUMAN_NUMBERS) / "train.txt").read_text() == "garbage\n"
    assert (untar_data(URLs.HUMAN_NUMBERS, force_download=True) / "train.txt").read_text().startswith("one \ntwo \n")


def _add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def _place_tgz(home: Path, build) -> Path:
    """Write a .tgz where untar_data looks for the archive of EVIL_URL, built by `build(tar)`."""
    archive = home / "archive" / "evil.tgz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        build(tar)
    return archive


def test_untar_data_extracts_a_placed_archive_without_network(home, no_network):
    def build(tar):
        _add_file(tar, "evil/train.txt", b"hello\n")
        _add_link(tar, "evil/link.txt", "train.txt")

    _place_tgz(home, build)
    path = untar_data(EVIL_URL)
    assert path == home / "data" / "evil"
    assert (path / "train.txt").read_text() == "hello\n"
    assert (path / "link.txt").read_text() == "hello\n"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda tar: _add_file(tar, "../evil"), "points outside"),
        (lambda tar: _add_file(tar, "evil/../../evil"), "points outside"),
        (lambda tar: _add_file(tar, "/tmp/evil"), "absolute path"),
        (lambda tar: _add_link(tar, "evil/link", "../../outside"), "symlink .* points outside"),
        (lambda tar: _add_link(tar, "evil/link", "/etc/passwd"), "absolute path"),
        (lambda tar: _add_link(tar, "evil/hard", "../outside", tarfile.LNKTYPE), "hard link .* points outside"),
    ],
)
def test_tar_members_escaping_the_target_are_rejected(home, no_network, build, message):
    _place_tgz(home, build)
    with pytest.raises(ValueError, match=message):
        untar_data(EVIL_URL)
    assert not (home / "data" / "evil").exists()
    assert not (home / "evil").exists() and not (home / "outside").exists()
    assert [p.name for p in (home / "data").iterdir()] == []  # the temporary folder is gone


def test_a_symlink_chain_that_escapes_through_another_link_is_rejected(home, no_network):
    def build(tar):
        _add_link(tar, "here", ".")  # each link looks harmless on its own,
        _add_link(tar, "up", "here/..")  # but "up" really is the cache's data folder
        _add_file(tar, "up/evil")

    _place_tgz(home, build)
    with pytest.raises(ValueError, match="outside the target folder"):
        untar_data(EVIL_URL)
    assert not (home / "data" / "evil").exists()


def test_zip_members_escaping_the_target_are_rejected(home, no_network):
    archive = home / "archive" / "evil.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil", "bad")
    with pytest.raises(ValueError, match="points outside"):
        untar_data("https://example.invalid/evil.zip")
    assert not (home / "evil").exists()


def test_zip_archive_with_loose_files_becomes_the_folder(home, no_network):
    archive = home / "archive" / "loose.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "A")
        zf.writestr("sub/b.txt", "B")
    path = untar_data("https://example.invalid/loose.zip")
    assert (path / "a.txt").read_text() == "A" and (path / "sub" / "b.txt").read_text() == "B"


def test_offline_download_error_names_the_url_and_where_to_put_the_archive(home, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="no network") as info:
        untar_data(URLs.IMDB)
    message = str(info.value)
    assert URLs.IMDB in message
    assert str(home / "archive" / "imdb.tgz") in message
    assert not (home / "archive").exists() or not list((home / "archive").iterdir())  # no partial file


def test_http_errors_are_not_reported_as_offline(home, monkeypatch):
    def not_found(url, *args, **kwargs):
        raise urllib.error.HTTPError(url, 404, "Not Found", None, None)

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(RuntimeError, match="HTTP 404"):
        untar_data(URLs.IMDB_SAMPLE)


def test_download_is_cached_and_extracted(home, tmp_path, monkeypatch):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:gz") as tar:
        _add_file(tar, "mnist_sample/labels.csv", b"name,label\n")
    calls = []

    def fake_urlopen(url, *args, **kwargs):
        calls.append(url)
        return io.BytesIO(payload.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = untar_data(URLs.MNIST_SAMPLE)
    assert (path / "labels.csv").read_text() == "name,label\n"
    assert (home / "archive" / "mnist_sample.tgz").exists()
    assert untar_data(URLs.MNIST_SAMPLE) == path
    assert calls == [URLs.MNIST_SAMPLE]


def test_unknown_c_key_is_rejected(home):
    with pytest.raises(ValueError, match="c_key must be one of"):
        untar_data(URLs.HUMAN_NUMBERS, c_key="nope")


def test_an_unwritable_cache_folder_is_the_users_mistake(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(UserError, match=r"cannot write Human Numbers into .*afile.*set RNNKIT_HOME to a writable"):
        untar_data(URLs.HUMAN_NUMBERS, base=tmp_path / "afile")
