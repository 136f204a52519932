"""File handling the commands share: which files are images, and writes that never leave half a file."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}


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


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """A temporary folder beside ``path`` to fill; it replaces ``path`` only if the block completes."""
    path = Path(path)
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
