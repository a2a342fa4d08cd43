"""The executable: instant help, version, one-line errors, model commands."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from seganswer_cli import __version__
from seganswer_cli.cli import app

runner = CliRunner()


def _run(*args):
    return subprocess.run([sys.executable, "-m", "seganswer_cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys\n"
        "from seganswer_cli.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'datasets', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("model", "data"):
        assert command in out.stdout


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"seganswer {__version__}"


def test_known_errors_are_one_line_and_non_zero(tmp_path):
    out = _run("model", "info", str(tmp_path / "missing"))
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "model folder not found" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run("model", "init", "huge", "--out", str(tmp_path / "x"))
    assert out.returncode == 2 and "unknown preset 'huge'" in out.stderr
    out = _run("model", "info")  # missing argument: click's usage error
    assert out.returncode == 2 and "Missing argument" in out.stderr


def test_model_init_then_info(tmp_path):
    folder = tmp_path / "tiny-model"
    out = _run("model", "init", "tiny", "--out", str(folder))
    assert out.returncode == 0, out.stderr
    assert (folder / "seganswer.json").is_file() and (folder / "mllm").is_dir()
    out = _run("model", "info", str(folder), "--json")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["preset"] == "tiny" and facts["parameters"]["projector"] > 0
    out = _run("model", "init", "tiny", "--out", str(folder))  # never written over
    assert out.returncode == 2 and "not empty" in out.stderr
