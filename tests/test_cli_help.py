"""Help written for people: every command and group of the app has ``-h``, an example, real choice
lists, no fake placeholders; ``--help`` imports nothing heavy. (Its time: bench/bench_help_time.py.)"""

import json
import re
import subprocess
import sys
from typing import get_args

import pytest
import typer.main

from cli_helpers import run_cli
from seganswer_cli.cli import app


def _paths():
    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


PATHS = _paths()


def test_the_walk_finds_every_command():
    names = {" ".join(p) for p in PATHS}
    assert {"", "infer", "segment", "plot", "plan", "merge-lora", "train-stage1", "train-stage2", "train-stage3",
            "pretrain-standin", "model", "model init", "model info", "model convert-sam", "data", "data synth",
            "data inspect", "eval", "eval run", "eval report", "eval sheet", "eval list"} == names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "seganswer")
def test_every_help_has_h_and_an_example_and_no_fake_placeholders(monkeypatch, capsys, path):
    code, out, err = run_cli(monkeypatch, capsys, *path, "-h")
    assert code == 0 and not err
    assert run_cli(monkeypatch, capsys, *path, "--help")[1] == out  # -h is --help
    assert "-h, --help" in out
    example = re.split(r"\n\n(?:Arguments|Options|Commands):", out.split("\n  Example:\n\n", 1)[1])[0]
    lines = example.splitlines()
    # Each example line is one command, indented and kept as written (not re-wrapped into the next).
    assert lines and all(line.startswith("      seganswer ") and "  seganswer" not in line.strip() for line in lines)
    assert any(line.strip().startswith(" ".join(["seganswer", *path])) for line in lines) or path[:1] == ["eval"]
    for fake in ("<bool>", "`", "list[", "[bold]", "[/]", "\b"):
        assert fake not in out, fake


def test_summaries_fit_the_command_list():
    """The first line of each help is what its group lists: one sentence that fits an 80-column terminal
    beside the group's longest command name (click cuts it at the first '. ' or at 78 - 6 - that name)."""
    for path in PATHS[1:]:
        group = typer.main.get_command(app)
        for name in path[:-1]:
            group = group.commands[name]
        command = group.commands[path[-1]]
        summary = command.help.split("\n\n")[0].strip()
        assert command.get_short_help_str(limit=78 - 6 - max(map(len, group.commands))) == summary, path


@pytest.mark.parametrize(("path", "shown"), [
    (["infer"], ["--roi <mask|bbox|none>", "--dtype <auto|float32|bfloat16|float16>",
                 "--device <auto|cpu|cuda|cuda:N|mps>"]),
    (["segment"], ["--dtype <auto|float32|bfloat16|float16>"]),
    (["eval", "run"], ["--roi <mask|bbox|none>", "--masks <model|gt>", "--option-order <shuffled|fixed>",
                       "--protocol <generate|likelihood>"]),
    (["train-stage1"], ["--phase <projector|lora>", "--mixed-precision <no|bf16|fp16>", "--strategy <ddp|fsdp>"]),
    (["pretrain-standin"], ["--phase <standin|points>"]),
    (["train-stage2"], ["--masks <online|precomputed>", "--too-long <skip|truncate>", "--strategy <ddp|fsdp>"]),
    (["train-stage3"], ["--strategy <ddp|fsdp>", "--mixed-precision <no|bf16|fp16>"]),
    (["plan"], ["--stage <stage1|stage2|stage3>", "--strategy <ddp|fsdp>"]),
    (["data", "synth"], ["--kind <refseg|vqa|rl|qseg>", "--world <default|demo|closeup|wide|vstar-like>",
                         "--layout <seganswer|vstar|pope>"]),
    (["data", "inspect"], ["--on-error <stop|skip>"]),
    (["eval", "report"], ["RUN_DIR <path>..."]),
])
def test_choices_are_listed(monkeypatch, capsys, path, shown):
    out = run_cli(monkeypatch, capsys, *path, "-h")[1]
    for text in shown:
        assert text in out


@pytest.mark.parametrize(("args", "option"), [
    (["infer", "img.png", "q", "--roi", "box"], "--roi"),
    (["infer", "img.png", "q", "--dtype", "fp8"], "--dtype"),
    (["infer", "img.png", "q", "--device", "gpu"], "--device"),
    (["eval", "run", "vstar", "--out", "run", "--protocol", "official"], "--protocol"),
    (["train-stage1", "--out", "run", "--strategy", "zero3"], "--strategy"),
    (["train-stage2", "--out", "run", "--masks", "cached"], "--masks"),
    (["pretrain-standin", "--out", "run", "--phase", "lora"], "--phase"),
    (["plan", "-c", "stage2-7b", "--strategy", "zero3"], "--strategy"),
    (["eval", "shapes-vqa", "--out", "run", "--batch-size", "0"], "--batch-size"),  # refused before run.json
    (["infer", "--batch", "q.jsonl", "--out", "a.jsonl", "--batch-size", "0"], "--batch-size"),
    (["data", "synth", "--out", "d", "--world", "moon"], "--world"),
])
def test_a_wrong_choice_is_refused_with_the_usage_line(monkeypatch, capsys, tmp_path, args, option):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and not out
    assert err.startswith("Usage: ") and f"Error: Invalid value for '{option}'" in err.splitlines()[-1]
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_flag_takes_no_value(monkeypatch, capsys):
    """``--json`` is a switch (the help shows no value for it); ``--json true`` is refused, not read."""
    code, out, err = run_cli(monkeypatch, capsys, "eval", "list", "--json", "true")
    assert code == 2 and not out and "Error: Got unexpected extra argument(s) (true)" in err
    code, out, _ = run_cli(monkeypatch, capsys, "eval", "list", "--json")
    assert code in (0, None) and json.loads(out)


def test_choice_lists_equal_their_sources():
    """The CLI spells these lists out (importing their homes would slow every --help); they must not drift."""
    from seganswer_cli import config
    from seganswer_cli.cli import data, eval, options, plan, train
    from seganswer_cli.data.shapes_scenes import WORLDS
    from seganswer_cli.eval import vstar
    from seganswer_cli.model.sparse_patches import ROI_MODES
    from seganswer_cli.reasoning import OPENINGS

    assert get_args(options.Roi) == ROI_MODES
    assert get_args(options.Opening) == OPENINGS
    assert set(get_args(options.Dtype)) == {"auto", *config.DTYPES}
    assert get_args(train.MixedPrecision) == config.MIXED_PRECISION
    assert get_args(train.Strategy) == config.STRATEGIES
    assert get_args(train.Stage2Masks) == config.STAGE2_MASKS
    assert get_args(train.TooLong) == config.STAGE2_TOO_LONG
    assert get_args(train.Stage1Phase) + get_args(train.StandinPhase) == config.STAGE1_PHASES
    assert get_args(eval.OptionOrder) == vstar.OPTION_ORDERS
    assert get_args(eval.Protocol) == vstar.PROTOCOL_VARIANTS
    assert get_args(data.World) == tuple(WORLDS)
    from seganswer_cli.train.memory_plan import STAGES

    assert get_args(plan.Stage) == STAGES


@pytest.mark.parametrize(("command", "stage"), [("train-stage1", "stage1"), ("pretrain-standin", "standin"),
                                                ("train-stage2", "stage2"), ("train-stage3", "stage3")])
def test_config_help_lists_every_shipped_recipe(monkeypatch, capsys, command, stage):
    from seganswer_cli.config import shipped_configs

    out = " ".join(run_cli(monkeypatch, capsys, command, "-h")[1].split())
    shipped = sorted(name for name in shipped_configs() if name.startswith(f"{stage}-"))
    assert shipped and all(name in out for name in shipped), (shipped, out)
    assert {"stage1-shapes", "stage2-shapes", "stage3-shapes", "standin-shapes"} <= set(shipped_configs())


def test_typers_own_flags_default_to_false_and_the_commands_flags_keep_theirs():
    """``_readable`` gives -h/--help and the completion flags a False default (so --help needs no
    pydantic); an on/off flag of a command whose default is None (the config decides) keeps None."""
    from typer._click import Context

    root = typer.main.get_command(app)
    ctx = Context(root)
    stage2 = root.get_command(ctx, "train-stage2")
    defaults = {p.name: p.default for p in stage2.params}
    assert defaults["gradient_checkpointing"] is None and defaults["freeze_vision"] is None
    assert stage2.get_help_option(ctx).default is False
    assert {p.name: p.default for p in root.get_params(ctx)} == {
        "version": False, "install_completion": False, "show_completion": False, "help": False}


def test_no_help_imports_anything_heavy():
    """Every --help in one process after another: torch, transformers, numpy, PIL and pydantic stay
    unimported (typer's own pydantic coercion included: cli/__init__.py's _readable)."""
    code = (
        "import contextlib, io, sys\n"
        "from seganswer_cli.cli import main\n"
        f"for path in {PATHS!r}:\n"
        "    sys.argv = ['seganswer', *path, '--help']\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n            main()\n        except SystemExit as e:\n            assert e.code == 0, path\n"
        "print([m for m in ('torch', 'transformers', 'numpy', 'PIL', 'pydantic', 'yaml') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
