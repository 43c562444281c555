"""Downloading official dataset files: checksums, resume of partial files, archive extraction.

Written on :mod:`urllib.request` (no extra dependency): a partial download is
kept as ``<file>.part`` and resumed with an HTTP ``Range`` request; the file
gets its final name only once its MD5 matches the one the dataset plug-in
publishes. Archives are extracted with :mod:`tarfile`'s ``data`` filter, which
refuses members that would land outside the destination.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from wsolbench import __version__
from wsolbench.errors import DataError

CHUNK = 1 << 16


@dataclass(frozen=True)
class Resource:
    """One official file: where it is, its name on disk, its checksum and whether it is an archive to extract.

    ``filename`` may hold folders (``metadata/CUB/val/image_ids.txt``); the
    checksum is the file's MD5, or, for files published in a git repository,
    its git blob SHA-1 (``git_sha1``, what the repository's tree lists).
    """

    url: str
    filename: str
    md5: str = ""
    extract: bool = False
    git_sha1: str = ""

    def source(self, mirror: str | None = None) -> str:
        """The URL to fetch: the official one, or ``<mirror>/<filename>``."""
        return f"{mirror.rstrip('/')}/{self.filename}" if mirror else self.url

    @property
    def checksum(self) -> tuple[str, str]:
        """``(name, expected value)`` of the checksum this file is checked with."""
        return ("git blob SHA-1", self.git_sha1) if self.git_sha1 else ("MD5", self.md5)

    def digest(self, path: Path) -> str:
        return git_blob_sha1(path) if self.git_sha1 else md5sum(path)


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The SHA-1 git gives a file's content: ``sha1(b"blob <size>\\0" + content)``."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(resource: Resource, dest: Path, progress: Any = None, mirror: str | None = None, timeout: float = 60) -> bool:
    """Download ``resource`` into ``dest``, resuming a partial file; ``False`` when it was already there.

    ``progress`` is a :class:`rich.progress.Progress` (or ``None``).
    """
    final = dest / resource.filename
    final.parent.mkdir(parents=True, exist_ok=True)
    kind, expected = resource.checksum
    if final.exists():
        if resource.digest(final) == expected:
            return False
        raise DataError(
            f"{final} exists but its {kind} is not the official {expected}: delete it and run the command again"
        )
    part = final.with_name(final.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    url = resource.source(mirror)
    headers = {"User-Agent": f"wsolbench/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)  # noqa: S310 - http(s) URLs
    except HTTPError as exc:
        if not (exc.code == 416 and offset):  # 416: nothing left to fetch, the partial file is whole
            raise DataError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
        response = None
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot reach {url} ({reason}). Check the network, or put {resource.filename} into {dest} by hand"
        ) from exc
    if response is not None:
        with response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the range: start again
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length else None
            task = progress.add_task(resource.filename, total=total, completed=offset) if progress else None
            try:
                with open(part, "ab" if offset else "wb") as f:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        f.write(chunk)
                        if progress:
                            progress.advance(task, len(chunk))
            except OSError as exc:
                raise DataError(
                    f"the download of {url} stopped ({exc}); run the command again to resume from {part}"
                ) from exc
    got = resource.digest(part)
    if got != expected:
        part.unlink()
        raise DataError(
            f"{resource.filename} from {url} has {kind} {got}, not the official {expected}; "
            f"the file was deleted, run the command again"
        )
    os.replace(part, final)
    return True


def extract(archive: Path, dest: Path) -> bool:
    """Extract a tar archive into ``dest`` once (a marker file remembers it); ``False`` if already done."""
    marker = dest / f".{archive.name}.extracted"
    if marker.exists():
        return False
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python before 3.10.12 / 3.11.4: refuse what the data filter refuses most often
                for member in tar.getmembers():
                    target = os.path.normpath(member.name)
                    if os.path.isabs(target) or target.startswith("..") or member.issym() or member.islnk():
                        raise DataError(f"{archive} holds an unsafe member {member.name!r}; not extracted")
                tar.extractall(dest)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}") from exc
    marker.touch()
    return True
