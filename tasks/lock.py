"""Serialise runs over the same source, so a second run plans against the first one's result."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def source_lock(database: str, source: str, logger: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Hold an exclusive lock on `source` in a local database for the duration of the block.

    On object storage (s3://, gs://) there is no lock: LanceDB's commit-conflict retries keep the
    tables consistent and free of duplicates, though two concurrent runs may then embed the same rows.
    """
    if "://" in database:
        yield
        return
    path = Path(database) / "_locks" / f"{source}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s: another run holds this source; waiting for it to finish", source)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
