"""Writing files safely: atomically, and never silently over an existing output.

A file is written to a temporary name beside its destination and renamed into
place, so a crash or a full disk never leaves half a file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class OutputExistsError(FileExistsError):
    """An output already exists and the caller did not ask to overwrite it."""


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path; raise :class:`OutputExistsError` if it exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; choose another name or pass overwrite=True (--overwrite) to replace it"
        )
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    Use it with any library that writes to a file name::

        with atomic_path("strip.png") as tmp:
            image.save(tmp, format="PNG")
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, overwrite: bool = False) -> Path:
    """Write ``data`` as indented UTF-8 JSON (Chinese kept readable) atomically."""
    return write_text(path, json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n", overwrite)


def save_image(image, path: str | os.PathLike, overwrite: bool = False, **save_kwargs) -> Path:
    """Save a PIL image atomically; the format comes from the file extension."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), None)
    with atomic_path(path, overwrite) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)
    return path
