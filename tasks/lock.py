"""Serialise runs over the same source, so a second run plans against the first one's result."""

from __future__ import annotations

import fcntl
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from schemas.tables import NAME_PATTERN


@contextmanager
def _lock_file(database: str, source: str) -> Iterator[IO[str]]:
    """The open lock file of `source`: `<database>/_locks/<source>.lock`, for a valid source name only (so the
    path never leaves the database)."""
    if not re.fullmatch(NAME_PATTERN, source):
        raise ValueError(f"{source!r} is not a source name; no lock file is made for it")
    path = Path(database) / "_locks" / f"{source}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def source_lock(database: str, source: str, logger: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Hold an exclusive lock on `source` in a local database for the duration of the block.

    On object storage (s3://, gs://) there is no lock: LanceDB's commit-conflict retries keep the
    tables consistent and free of duplicates, though two concurrent runs may then embed the same rows.
    """
    if "://" in database:
        yield
        return
    with _lock_file(database, source) as handle:
        if not _try_lock(handle):
            logger.info("%s: another run holds this source; waiting for it to finish", source)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextmanager
def unless_running(database: str, source: str) -> Iterator[bool]:
    """Hold `source`'s lock for the block if no run holds it now; yields whether it got it (False: a run
    holds it, so leave its files alone). On object storage there is no lock to ask: True."""
    if "://" in database:
        yield True
        return
    with _lock_file(database, source) as handle:
        yield _try_lock(handle)
