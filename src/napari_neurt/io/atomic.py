"""Write files so that a reader never sees half of one: write a temporary sibling, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    If the body raises, the temporary file is removed and `path` is left as it was. The file
    gets the permissions a plain ``open(path, "w")`` would give it (those of the file it
    replaces, or 0o666 less the umask), not the owner-only ones of a temporary file.

    >>> with atomic_path("out.npz") as tmp:          # doctest: +SKIP
    ...     np.savez(tmp, traces=traces)
    """
    with atomic_files([Path(path)]) as (tmp,):
        yield tmp


@contextmanager
def atomic_files(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """`atomic_path` for several files that belong together: temporary siblings of `paths`,
    renamed onto them one after the other only once the body has written them all."""
    paths, temps = [Path(path) for path in paths], []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
            )
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for temp, path in zip(temps, paths, strict=True):
            os.chmod(temp, _mode_for(path))
            os.replace(temp, path)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _mode_for(path: Path) -> int:
    """Permission bits for a new version of `path`: its current ones, else 0o666 & ~umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask
