"""Download, verify and extract the official Large Movie Review Dataset archive.

    python -m experiments.sentiment.download [--dest DIR] [--timeout S] [--with-unsup] [--force]

The archive (84,125,825 bytes) is streamed into a temporary file beside its destination, its size,
MD5 and SHA-256 are checked against the published values, and only then is it renamed to
``DIR/aclImdb_v1.tar.gz``; it is extracted into a temporary folder which is renamed to ``DIR/aclImdb``
when complete. ``DIR`` defaults to ``datasets/cache/`` (git-ignored), where :func:`.data.load_imdb`
finds it. Offline, the first connection attempt fails within ``--timeout`` seconds and the command
says how to point the experiment at a local copy instead.

Checksums: Stanford's page publishes none. The MD5 ``7c2ac02c03563afcf9b574c7e56c153a`` is the one
torchtext (``torchtext/datasets/imdb.py``) and PaddlePaddle check; the SHA-256
``c40f74a1...91923d1658fe`` and the size are those in Hugging Face ``datasets``' IMDB
``dataset_infos`` and in Julia's MLDatasets/DataDeps registration.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .data import DOWNLOAD_DIR, how_to_point_at_data

URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
ARCHIVE_NAME = "aclImdb_v1.tar.gz"
SIZE = 84_125_825
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
DEFAULT_TIMEOUT = 10.0  # seconds, per blocking socket operation: offline fails at once
_CHUNK = 1 << 16
_DONE_MARK = ".complete"


class DownloadError(RuntimeError):
    """The archive could not be fetched (offline, HTTP error, timeout)."""


class ChecksumError(DownloadError):
    """The fetched bytes are not the published archive."""


def _verify(path: Path, md5: str, sha256: str, size: int | None) -> None:
    h_md5, h_sha = hashlib.md5(), hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h_md5.update(chunk)
            h_sha.update(chunk)
            n += len(chunk)
    problems = []
    if size is not None and n != size:
        problems.append(f"size {n} bytes, expected {size}")
    if h_md5.hexdigest() != md5:
        problems.append(f"md5 {h_md5.hexdigest()}, expected {md5}")
    if h_sha.hexdigest() != sha256:
        problems.append(f"sha256 {h_sha.hexdigest()}, expected {sha256}")
    if problems:
        raise ChecksumError(
            f"{path.name}: not the published archive ({'; '.join(problems)}); "
            "the partial file was deleted, try again later. " + how_to_point_at_data()
        )


def fetch_archive(
    dest: Path,
    *,
    url: str = URL,
    timeout: float = DEFAULT_TIMEOUT,
    md5: str = MD5,
    sha256: str = SHA256,
    size: int | None = SIZE,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest/aclImdb_v1.tar.gz`` via a temporary file, verified before rename.

    An existing archive that verifies is reused. Raises DownloadError (no network: at once) or
    ChecksumError; neither leaves a file behind."""
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / ARCHIVE_NAME
    if final.is_file():
        try:
            _verify(final, md5, sha256, size)
            return final
        except ChecksumError:
            final.unlink()
    fd, tmp_name = tempfile.mkstemp(prefix=ARCHIVE_NAME + ".", suffix=".part", dir=dest)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
                with tqdm(
                    total=int(total) if total else size,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=ARCHIVE_NAME,
                    disable=not progress,
                ) as bar:
                    for chunk in iter(lambda: resp.read(_CHUNK), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"could not download {url}: {reason}. " + how_to_point_at_data()) from e
        _verify(tmp, md5, sha256, size)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 -> what open() would give
        os.replace(tmp, final)
        return final
    finally:
        if tmp.exists():
            tmp.unlink()


def _members(tar: tarfile.TarFile, with_unsup: bool):
    for m in tar:
        parts = Path(m.name).parts
        if not with_unsup and len(parts) >= 3 and parts[1] == "train" and parts[2] == "unsup":
            continue
        yield m


def extract(archive: Path, dest: Path, *, with_unsup: bool = False, progress: bool = True) -> Path:
    """Extract ``archive`` into ``dest/aclImdb`` through a temporary folder renamed when complete.

    ``train/unsup`` (50,000 unlabelled reviews) is left out unless ``with_unsup``."""
    final = dest / "aclImdb"
    tmp = Path(tempfile.mkdtemp(prefix=".aclImdb.", suffix=".part", dir=dest))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            members = _members(tar, with_unsup)
            if progress:
                members = tqdm(members, desc="extracting", unit=" files")
            for m in members:
                tar.extract(m, tmp, **kw)
        if not (tmp / "aclImdb" / "train").is_dir():
            raise DownloadError(f"{archive}: no aclImdb/train/ inside the archive")
        (tmp / "aclImdb" / _DONE_MARK).write_text(f"extracted from {archive.name}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / "aclImdb", final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(
    dest: str | os.PathLike = DOWNLOAD_DIR,
    *,
    url: str = URL,
    timeout: float = DEFAULT_TIMEOUT,
    with_unsup: bool = False,
    force: bool = False,
    keep_archive: bool = True,
    progress: bool = True,
    md5: str = MD5,
    sha256: str = SHA256,
    size: int | None = SIZE,
) -> Path:
    """Fetch, verify and extract the archive; returns the ``aclImdb`` folder (already there: reused).

    ``md5``/``sha256``/``size`` are the published values; tests substitute those of a tiny archive."""
    dest = Path(dest)
    done = dest / "aclImdb" / _DONE_MARK
    if done.is_file() and not force:
        return done.parent
    archive = fetch_archive(dest, url=url, timeout=timeout, progress=progress, md5=md5, sha256=sha256, size=size)
    root = extract(archive, dest, with_unsup=with_unsup, progress=progress)
    if not keep_archive:
        archive.unlink()
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.sentiment.download",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--dest", type=Path, default=DOWNLOAD_DIR, help=f"folder for the archive and aclImdb/ (default {DOWNLOAD_DIR})"
    )
    ap.add_argument("--url", default=URL, help="archive URL (default: Stanford's)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="socket timeout, seconds")
    ap.add_argument("--with-unsup", action="store_true", help="also extract train/unsup")
    ap.add_argument("--force", action="store_true", help="extract again even if already done")
    ap.add_argument(
        "--no-keep-archive",
        dest="keep_archive",
        action="store_false",
        help="delete the verified archive after extraction",
    )
    args = ap.parse_args(argv)
    try:
        root = download(
            args.dest,
            url=args.url,
            timeout=args.timeout,
            with_unsup=args.with_unsup,
            force=args.force,
            keep_archive=args.keep_archive,
        )
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"IMDB ready at {root}; load_imdb() finds it there when the shared copy is absent, "
        f"or set SCRATCH_RNN_IMDB={root}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
