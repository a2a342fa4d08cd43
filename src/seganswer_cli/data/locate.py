"""Finding a dataset's files where the user unpacked them, so nobody has to move files around.

A user may point at the folder the dataset ships as, its parent, or one of its sub-folders; we
look one level deeper and one level shallower. When something is missing, the error says what
was expected and every place we looked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from seganswer_cli.errors import DataError


def nearby_roots(path: Path) -> list[Path]:
    """``path``, its sub-folders (one level deeper) and its parent (one level shallower), in that order."""
    path = Path(path)
    roots = [path]
    if path.is_dir():
        roots += sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if path.parent != path:
        roots.append(path.parent)
    return roots


def find_file(path: Path, candidates: Sequence[str], what: str) -> Path:
    """The first existing ``root / candidate`` over ``nearby_roots(path)``; ``path`` itself if it is a file.

    Raises ``DataError`` naming ``what`` was expected, the names tried and where we looked.
    """
    path = Path(path)
    if path.is_file() and (not candidates or path.name in candidates):
        return path
    looked = []
    for root in nearby_roots(path):
        for name in candidates:
            candidate = root / name
            looked.append(candidate)
            if candidate.is_file():
                return candidate
    raise DataError(
        f"{what} not found: expected one of {', '.join(candidates)} in {path} "
        f"(looked in {_places(looked, path)})"
    )


def find_dir(path: Path, candidates: Sequence[str], what: str) -> Path:
    """Like ``find_file`` for a folder."""
    looked = []
    for root in nearby_roots(Path(path)):
        for name in candidates:
            candidate = root / name if name else root
            looked.append(candidate)
            if candidate.is_dir():
                return candidate
    raise DataError(
        f"{what} not found: expected a folder {' or '.join(c or '.' for c in candidates)} near {path} "
        f"(looked in {_places(looked, Path(path))})"
    )


def first_existing_dir(candidates: Iterable[Path]) -> Path | None:
    """The first candidate that is a folder, or None."""
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else ``DataError`` naming ``what``."""
    if not Path(path).is_file():
        raise DataError(f"{what} not found: {path}")
    return Path(path)


def _places(paths: list[Path], base: Path, limit: int = 8) -> str:
    shown = [str(p) for p in paths[:limit]]
    more = f", ... {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(shown) + more
