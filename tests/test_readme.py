"""The README's two set-up commands stay true: CI runs the second, this test runs the first."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = ROOT / "src" / "seganswer_cli" / "assets" / "shapes" / "seganswer.json"


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command():
    _, test_command = _readme_commands()
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_first_command_runs(tmp_path):
    assert SHIPPED_MODEL.is_file(), "the shipped shapes model (the default --model) is missing from the checkout"
    first, _ = _readme_commands()
    install, _, main_job = first.partition("&&")
    assert install.strip().startswith("python -m pip install")
    argv = shlex.split(main_job.strip())
    assert argv[0] == "seganswer"
    # The package is installed in this environment already; run the job through the same entry point.
    image, question = argv[2], argv[3]
    assert (ROOT / image).is_file()
    argv = [str(ROOT / a) if a == image else a for a in argv]  # run in a scratch folder: out/ lands there
    out = subprocess.run([sys.executable, "-m", "seganswer_cli", *argv[1:], "--json"], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    lines = (ROOT / "examples" / "questions.jsonl").read_text().splitlines()
    expected = {e["question"]: e["answer"] for e in map(json.loads, lines)}
    assert record["answer"] == expected[question]  # the shipped model's answer to the README's example
    assert len(record["steps"]) == 1  # it segmented before answering
    vis = tmp_path / argv[argv.index("--save-vis") + 1]
    assert vis.is_file() and vis.stat().st_size > 0
