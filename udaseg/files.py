"""Writing files so that a crash never leaves half of one, and checking outputs before work.

Checkpoints, pseudo labels, summaries and evaluation results are all written the same way: into
a temporary file beside the destination, flushed to disk, then renamed over it. A reader, or a
run resumed after SIGKILL, sees the old file or the whole new one, never a partial one.

Commands check their output paths (`check_output_folder`, `check_output_file`) before any work
starts: an hour of evaluation must not end in "is a directory" or "read-only file system".
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from udaseg.errors import ConfigError, OutputError

# errno values that say "the place cannot be written", not "udaseg has a bug": the CLI reports
# an OSError with one of these as one line naming the file.
WRITE_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENOTDIR,
        errno.EISDIR,
    }
)

# What `atomic_write` names its temporary files: `.<name>.<random>.tmp`.
_TEMPORARY_FILE = re.compile(r"^\..+\.tmp$")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace `path` with what `write(stream)` writes to a binary stream.

    Parent folders are created; the file gets the usual permissions (0666 less the umask),
    not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove_stale_temporary_files(folder: str | Path) -> list[Path]:
    """Delete the `.<name>.*.tmp` files a killed `atomic_write` left in `folder`; return them.

    Only call this when no other process writes into `folder` (a run's start): a kill during a
    save leaves its temporary file behind, and every further kill would add one more.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if _TEMPORARY_FILE.match(path.name) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def is_disk_full(error: BaseException) -> bool:
    """Whether an exception from a write says the disk (or quota) is full.

    torch.save reports a failed write as a RuntimeError of its zip writer, whose text may or may
    not carry the operating system's "No space left on device".
    """
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left" in text or "Disk quota exceeded" in text


def _nearest_existing(path: Path) -> Path:
    """`path` itself when it exists, else its nearest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(path: str | Path, option: str) -> Path:
    """Raise OutputError unless `path` is, or can be created as, a writable folder.

    Args:
        path: the folder a command will write into (it may not exist yet).
        option: how the user gave it (`--out`, `run_dir`), for the message.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: exists and is a file, not a folder")
    _check_writable_under(path, path, option)
    return path


def _check_writable_under(folder: Path, path: Path, option: str) -> None:
    """OutputError unless `folder` exists as a writable folder or can be created as one."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{option} {path}: cannot create a folder under the file {existing}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"{option} {path}: cannot write in {existing} (no write permission, or a read-only "
            "file system)"
        )


def check_output_file(path: str | Path, option: str, overwrite: bool) -> Path:
    """Raise OutputError unless `path` can be written as a file (replaced only with overwrite).

    Args:
        path: the file a command will write (atomically, so its folder must be writable).
        option: how the user gave it (`--json`), for the message.
        overwrite: whether an existing file may be replaced (`--overwrite`).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(
            f"{option} {path}: is a folder; give a file name, e.g. {path / 'result.json'}"
        )
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {path}: exists; pass --overwrite to replace it")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{option} {path}: {parent} is a file, not a folder")
    _check_writable_under(parent, path, option)
    return path


def refuse_foreign_output(
    out: Path,
    recorded: dict | None,
    settings: dict,
    command: str,
    holds: str,
    label: str | None = None,
) -> None:
    """ConfigError (without --overwrite) when `out` holds another run's outputs or other files.

    Args:
        out: the output folder of a resumable command.
        recorded: the settings the folder's earlier run recorded, or None if it recorded none.
        settings: this run's settings; equal settings mean "resume", not "refuse".
        command: the command's name, for the message (`udaseg <command>`).
        holds: what the folder holds, completed by the differing setting, e.g.
            "a translation made with another" -> "... another beta".
        label: how the message names the folder (default: the path).
    """
    name = label or str(out)
    if recorded is not None and recorded != settings:
        differing = next(
            (key for key in settings if recorded.get(key) != settings[key]), "settings"
        )
        replace = "it" if holds.startswith("a ") else "them"
        raise ConfigError(
            f"{name}: holds {holds} {differing}; pass --overwrite to replace {replace}, or choose "
            "another --out"
        )
    if recorded is None and out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"{name}: not empty and not written by `udaseg {command}`; pass --overwrite or "
            "choose another --out"
        )
