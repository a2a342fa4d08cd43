"""Running ``seganswer`` in the test process, as its console script does (``cli.main``)."""

from __future__ import annotations

import sys

from seganswer_cli.cli import main


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``seganswer ARGS`` in this process, through ``main`` (its one-line error handling included):
    (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["seganswer", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err
