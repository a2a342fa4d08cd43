"""Developer sessions: ``nox -s lint``, ``nox -s tests``; ``nox -s bench`` is not run by default."""

from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

PYPROJECT = nox.project.load_toml("pyproject.toml")
BENCH_DIR = Path("bench")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the package, tests, benchmarks and this file."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", "src", "tests", "bench", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on CPU (GPU-marked tests skip themselves without CUDA)."""
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every ``bench/bench_*.py`` (or those named: ``nox -s bench -- data``); results in bench/results/."""
    session.install("-e", ".")
    names = session.posargs or sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))
    for name in names:
        session.run("python", str(BENCH_DIR / f"bench_{name}.py"))
