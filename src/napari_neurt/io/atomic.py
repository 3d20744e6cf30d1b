"""Write files so that a reader never sees half of one: write a temporary sibling, then rename."""

from __future__ import annotations

import os
import secrets
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
            temps.append(_new_temporary(path))
        # a writer may make its file anew (safetensors' save_file: owner-only), so the plain
        # permissions are put back afterwards
        modes = [temp.stat().st_mode & 0o7777 for temp in temps]
        yield temps
        for temp, path, mode in zip(temps, paths, modes, strict=True):
            try:  # a new version keeps the permissions of the file it replaces
                mode = path.stat().st_mode & 0o7777
            except FileNotFoundError:
                pass
            os.chmod(temp, mode)
            os.replace(temp, path)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _new_temporary(path: Path) -> Path:
    """Create an empty temporary sibling of `path` with the permissions ``open(path, "w")`` would
    give a new file: 0o666 less the umask, which the kernel applies. (Reading the umask means
    setting it, which would race with files other threads create meanwhile.)"""
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temp
        except FileExistsError:
            continue
