"""Atomic outputs, build locks and content hashes: stages write to a temporary sibling and rename
when done, so an interrupted run leaves nothing that looks finished, and a rerun can skip what is;
a cached build (the organism, the sentiment data and model) is made through :func:`build_once`
(under :func:`build_lock`), so a second process asking for the same output at the same time waits
and then reuses it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; builds are not guarded there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """Hash of every file's relative path and content under ``path`` (a file or a directory)."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it to ``final`` only on success.

    An existing *directory* ``final`` is replaced (callers check first that it is their own output,
    :mod:`irr_ray.preflight`); an existing file or link at ``final`` is never touched: an error.
    """
    final = Path(final)
    if (final.is_symlink() and not final.exists()) or (final.exists() and not final.is_dir()):
        from irr_ray.preflight import OutputExistsError

        raise OutputExistsError(f"{final} is an existing file; irr-ray never writes a directory over it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(final)
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def build_lock(final: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the output ``final`` of a cached build for the block.

    Two processes building the same output at once (two users, two pytest-xdist workers) would each
    build it and the later rename would replace the first one's directory under its readers. Callers
    check their cache, and if it misses take this lock and check again before building: the second
    process waits here, then finds the first one's build. The lock is an ``flock`` on the hidden
    sibling ``.<name>.lock``, released if the holder dies, and removed when the block ends (a waiter
    that locked the removed file opens the current one and locks again), so nothing is left beside
    ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    lock = final.parent / f".{final.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process building %s", final)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)  # the holder removed that file when it finished: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # still held: a waiter on this file sees it gone and retries
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path of the file ``final`` for a writer that takes a path
    (``savefig``, safetensors, parquet); rename it to ``final`` on success, remove it otherwise.

    The temporary name ends in ``.tmp-<random>``, so a glob for ``final``'s extension never sees it:
    give the writer its format explicitly if it would guess it from the extension.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary sibling and rename it to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def build_once(final: str | Path, cached: Callable[[], T | None], build: Callable[[], T]) -> tuple[T, bool]:
    """``(cached(), True)`` when ``final`` already holds the build, else ``(build(), False)`` under
    :func:`build_lock`, with the cache checked again once the lock is held (another process may have
    built it meanwhile: then ``(cached(), True)``). ``cached`` returns None on a miss."""
    found = cached()
    if found is not None:
        return found, True
    with build_lock(final):
        found = cached()
        if found is not None:
            return found, True
        return build(), False
