"""One writing process per store: an advisory ``flock`` on the store's lock file.

The lock is re-entrant within a process (a model writer and a ``write_tracks`` call of the same
process share it) and the kernel drops it when the process dies, so a killed writer never leaves a
stale lock. Readers take no lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable

from embedstore.errors import StoreError

_HELD: dict[str, list[int]] = {}  # lock file -> [fd, holders]
_GUARD = threading.Lock()


#: seconds to wait for another process's lock before giving up
LOCK_TIMEOUT = 10.0


def acquire(lock_file: Path, store: Path, on_first: Callable[[], None] | None = None) -> None:
    """Take the write lock of ``store``, waiting up to :data:`LOCK_TIMEOUT` seconds for another
    process to release it; ``on_first`` runs once when this process first takes it."""
    key = str(lock_file.resolve())
    with _GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return
        try:
            fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only store or file system: say so of the store, not of its lock file
            raise StoreError(f"{store}: cannot write to this store ({exc.strerror or exc})") from None
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise StoreError(f"{store}: another process is writing this store (lock {lock_file}); "
                                     "wait for it to finish") from None
                time.sleep(0.05)
        _HELD[key] = [fd, 1]
    if on_first is not None:
        on_first()


def release(lock_file: Path) -> None:
    """Give back one hold of the lock taken by :func:`acquire`."""
    key = str(lock_file.resolve())
    with _GUARD:
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
            del _HELD[key]
