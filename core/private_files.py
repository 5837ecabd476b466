"""Files the service keeps for itself are its owner's only: 0600 files in 0700 folders.

The ledger (a SQLite file and its -wal/-shm companions, which SQLite creates with the
database file's permissions), the embedded history store and the historian's spool hold
tenants' names, balances and every reading: nobody else on the machine needs to read them.
Permissions are set when a file or folder is created (whatever the umask); files that
already exist are left as they are, with a warning when others can read them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("openprepay.files")

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path, *, own: bool = False) -> Path:
    """Create `path` and any missing parents as 0700 folders. `own`: the folder is the
    service's alone (a spool), so an existing one is tightened to 0700 too."""
    missing = []
    at = path
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:  # created concurrently: keep its permissions
            continue
        os.chmod(folder, DIR_MODE)
    if own and not missing and path.is_dir() and stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty as a 0600 file (its folder as `private_dir`) unless it exists;
    an existing file that others can read is reported, not changed."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        warn_if_shared(path)
        return path
    os.close(fd)
    os.chmod(path, FILE_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """`os.open` that creates a file 0600 (an existing file keeps its permissions)."""
    return os.open(path, flags, FILE_MODE)


def warn_if_shared(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        log.warning(
            "%s is readable by other users (mode %o); restrict it: chmod 600 %s",
            path,
            mode,
            path,
        )
