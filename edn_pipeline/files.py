"""File handling the commands share: which files are images or videos, and writes that never leave half a file."""

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
# Videos, recognised by name (edn_pipeline.video_io reads and writes them); a video's output keeps its suffix.
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"}
# What atomic_write names its temporary file for NAME: mkstemp's 8 random characters between our prefix and suffix.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def _usual_mode(path: Path, mode: int) -> None:
    """Give a temporary file or folder the permissions a plain open()/mkdir() would (mkstemp makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """A file object for a temporary file beside ``path``, renamed over ``path`` only once fully written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _usual_mode(Path(tmp), 0o666)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_stale_temporaries(paths: Iterable[Path]) -> int:
    """Delete the temporary files a killed :func:`atomic_write` of any of ``paths`` left behind; return how many.

    Only names of the exact form it makes for those paths are touched, so other files stay, whatever they are.
    """
    wanted: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        wanted.setdefault(path.parent, set()).add(path.name)
    removed = 0
    for folder, names in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match and match["name"] in names and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    return removed


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """A temporary folder beside ``path`` to fill; it replaces ``path`` only if the block completes.

    ``path`` may be missing or a folder; a file there is refused (FileExistsError) rather than replaced.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        _usual_mode(staging, 0o777)
        yield staging
        old = staging.with_suffix(".old")
        if path.exists():
            os.replace(path, old)  # two renames: the previous folder stays whole until the new one is in place
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
