"""fastai's sample-data addresses (`URLs`) and `untar_data`, which downloads and unpacks them into a local cache.

`URLs.HUMAN_NUMBERS` is never downloaded: it is synthetic, so it is generated locally,
byte for byte the same as fastai's archive.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PureWindowsPath

from rnnkit.errors import UserError
from rnnkit.utils import L, atomic_write

__all__ = ["URLs", "untar_data"]


class URLs:
    """Addresses of fastai's datasets and pretrained weights, for `untar_data`."""

    S3 = "https://s3.amazonaws.com/fast-ai-"
    URL = f"{S3}sample/"
    S3_IMAGE = f"{S3}imageclas/"
    S3_NLP = f"{S3}nlp/"
    S3_MODEL = f"{S3}modelzoo/"

    ADULT_SAMPLE = f"{URL}adult_sample.tgz"
    HUMAN_NUMBERS = f"{URL}human_numbers.tgz"
    IMDB = f"{S3_NLP}imdb.tgz"
    IMDB_SAMPLE = f"{URL}imdb_sample.tgz"
    MNIST_SAMPLE = f"{URL}mnist_sample.tgz"
    MNIST_TINY = f"{URL}mnist_tiny.tgz"
    MNIST = f"{S3_IMAGE}mnist_png.tgz"
    IMAGENETTE = f"{S3_IMAGE}imagenette2.tgz"
    IMAGENETTE_160 = f"{S3_IMAGE}imagenette2-160.tgz"
    IMAGENETTE_320 = f"{S3_IMAGE}imagenette2-320.tgz"
    PETS = f"{S3_IMAGE}oxford-iiit-pet.tgz"
    WIKITEXT = f"{S3_NLP}wikitext-103.tgz"
    WIKITEXT_TINY = f"{S3_NLP}wikitext-2.tgz"
    WT103_FWD = f"{S3_MODEL}wt103-fwd.tgz"
    WT103_BWD = f"{S3_MODEL}wt103-bwd.tgz"


class _DataPath(type(Path())):  # type: ignore[misc]
    """A `Path` with fastai's `ls()`, so `untar_data(...).ls()` works as in the book."""

    def ls(self) -> L:
        """The folder's entries, sorted by name."""
        return L(sorted(self.iterdir()))

    def __repr__(self) -> str:
        return f"Path({str(self)!r})"


# Sub-folders of the cache for each `c_key`, as in fastai's config.
_CACHE_DIRS = {"data": "data", "storage": "data", "archive": "archive", "model": "models"}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip")


def _cache_root(base: str | os.PathLike | None) -> Path:
    if base is not None:
        return Path(base).expanduser()
    return Path(os.environ.get("RNNKIT_HOME") or "~/.rnnkit").expanduser()


def _file_name(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"untar_data needs a URL that ends in a file name, like URLs.IMDB; got {url!r}.")
    return name


def _stem(file_name: str) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name


_ONES = (
    "", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _number_words(n: int) -> str:
    """English words for 1 <= n <= 9999 the way the dataset spells them: `one thousand one hundred twenty three`."""
    thousands, rest = divmod(n, 1000)
    hundreds, rest = divmod(rest, 100)
    words = []
    if thousands:
        words += [_ONES[thousands], "thousand"]
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        words.append(_TENS[rest // 10])
        rest %= 10
    if rest:
        words.append(_ONES[rest])
    return " ".join(words)


def _make_human_numbers(dest: Path, force: bool) -> Path:
    """Write fastai's human_numbers: 1..7999 in train.txt, 8001..9999 in valid.txt, one per line."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name, numbers in (("train.txt", range(1, 8000)), ("valid.txt", range(8001, 10000))):
            path = dest / name
            if force or not path.exists():
                atomic_write(path, "".join(f"{_number_words(i)} \n" for i in numbers))
    except OSError as e:  # the cache folder the user chose (RNNKIT_HOME) cannot hold the files
        raise UserError(f"cannot write Human Numbers into {dest} ({e.strerror or e}); set RNNKIT_HOME to a "
                        "writable folder") from e
    return dest


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        os.replace(tmp, dest)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"Downloading {url} failed: the server answered HTTP {e.code} ({e.reason}).") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise RuntimeError(
            f"Cannot download {url}: there is no network connection ({reason}). "
            f"To use it offline, download the archive on a machine with internet access and place it at "
            f"{dest}; untar_data then extracts it without downloading."
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def _is_inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _check_name(archive: Path, name: str, root: str) -> None:
    """Reject a member name that is absolute or climbs out of the extraction folder `root`."""
    if os.path.isabs(name) or name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise ValueError(f"Refusing to extract {archive}: member {name!r} has an absolute path.")
    if not _is_inside(root, os.path.normpath(os.path.join(root, name))):
        raise ValueError(f"Refusing to extract {archive}: member {name!r} points outside the target folder.")


def _check_link(archive: Path, name: str, target: str, root: str, hard: bool) -> None:
    """Reject a link whose target, read as the link would be, lies outside the extraction folder."""
    kind = "hard link" if hard else "symlink"
    if os.path.isabs(target) or PureWindowsPath(target).drive:
        raise ValueError(f"Refusing to extract {archive}: {kind} {name!r} points to the absolute path {target!r}.")
    start = root if hard else os.path.dirname(os.path.join(root, name))
    if not _is_inside(root, os.path.normpath(os.path.join(start, target))):
        raise ValueError(
            f"Refusing to extract {archive}: {kind} {name!r} -> {target!r} points outside the target folder."
        )


def _extract_tar(archive: Path, root: Path) -> None:
    real_root = os.path.realpath(root)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:  # check everything before writing anything
            _check_name(archive, m.name, real_root)
            if m.issym() or m.islnk():
                _check_link(archive, m.name, m.linkname, real_root, hard=m.islnk())
            elif not (m.isfile() or m.isdir()):
                raise ValueError(f"Refusing to extract {archive}: member {m.name!r} is a device or pipe.")
        for m in members:
            # Links extracted earlier are real on disk now: resolve through them before each write.
            where = os.path.realpath(os.path.join(real_root, m.name))
            if not _is_inside(real_root, where):
                raise ValueError(
                    f"Refusing to extract {archive}: member {m.name!r} resolves outside the target folder."
                )
            if m.issym() or m.islnk():
                base = real_root if m.islnk() else os.path.dirname(where)
                if not _is_inside(real_root, os.path.realpath(os.path.join(base, m.linkname))):
                    raise ValueError(
                        f"Refusing to extract {archive}: link {m.name!r} -> {m.linkname!r} "
                        "resolves outside the target folder."
                    )
            if hasattr(tarfile, "data_filter"):
                try:
                    tar.extract(m, root, filter="data")
                except tarfile.FilterError as e:
                    raise ValueError(f"Refusing to extract {archive}: {e}") from e
            else:
                tar.extract(m, root)


def _extract_zip(archive: Path, root: Path) -> None:
    real_root = os.path.realpath(root)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename, real_root)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink; its target is the content
                target = zf.read(info).decode("utf-8", "replace")
                _check_link(archive, info.filename, target, real_root, hard=False)
        zf.extractall(root, members=infos)


def _extract(archive: Path, dest: Path) -> None:
    """Unpack `archive` into `dest` via a temporary folder, so `dest` appears complete or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        else:
            raise ValueError(f"{archive} is neither a tar nor a zip archive; delete it and call untar_data again.")
        entries = list(tmp.iterdir())
        # fastai archives hold one top folder: that folder becomes `dest`.
        single_dir = len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink()
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(entries[0] if single_dir else tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def untar_data(
    url: str,
    archive: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    c_key: str = "data",
    force_download: bool = False,
    base: str | os.PathLike | None = None,
) -> Path:
    """Download `url` (once) and extract it; returns the extracted folder.

    Args:
        archive: folder for downloaded archives (default `<base>/archive`).
        data: folder to extract into (default `<base>/<c_key folder>`).
        base: cache root; default `$RNNKIT_HOME`, else `~/.rnnkit`.
    """
    if c_key not in _CACHE_DIRS:
        raise ValueError(f"c_key must be one of {sorted(_CACHE_DIRS)}, got {c_key!r}.")
    root = _cache_root(base)
    data_dir = Path(data).expanduser() if data is not None else root / _CACHE_DIRS[c_key]
    archive_dir = Path(archive).expanduser() if archive is not None else root / "archive"
    file_name = _file_name(url)
    dest = _DataPath(data_dir / _stem(file_name))
    if url == URLs.HUMAN_NUMBERS:
        return _make_human_numbers(dest, force=force_download)
    if dest.exists() and not force_download:
        return dest
    archive_path = archive_dir / file_name
    if force_download or not archive_path.exists():
        _download(url, archive_path)
    _extract(archive_path, dest)
    return dest
