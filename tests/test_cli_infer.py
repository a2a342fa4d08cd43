"""``seganswer infer`` and ``seganswer segment`` end to end through the CLI."""

import json
import subprocess
import sys

import pytest
from PIL import Image


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "seganswer_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def patterned_folder(patterned_model, tmp_path_factory):
    model, cases = patterned_model
    folder = model.save_pretrained(tmp_path_factory.mktemp("models") / "patterned")
    images = []
    for i, (image, question, _, answer) in enumerate(cases):
        path = folder.parent / f"case{i}.png"
        image.save(path)
        images.append((path, question, answer))
    return folder, images


def test_infer_prints_answer_and_writes_the_figure(patterned_folder, tmp_path):
    folder, images = patterned_folder
    path, question, answer = images[0]
    vis = tmp_path / "vis" / "fig.png"
    out = _run("infer", path, question, "--model", folder, "--save-vis", vis)
    assert out.returncode == 0, out.stderr
    assert answer in out.stdout and "<|seg|>" in out.stdout
    with Image.open(vis) as fig:
        assert fig.width > fig.height > 100  # image + segmented view side by side


def test_infer_json_is_one_object_on_stdout(patterned_folder):
    folder, images = patterned_folder
    path, question, answer = images[1]
    out = _run("infer", path, question, "--model", folder, "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["answer"] == answer and record["answer_source"] == "tag"
    (step,) = record["steps"]
    assert step["mask"]["size"] == [180, 240] and step["kept_tokens"] > 0
    assert set(record["timings"]) >= {"prefill", "decode", "mask", "total"}


def test_infer_batch_reports_bad_lines_and_resumes(patterned_folder, tmp_path):
    folder, images = patterned_folder
    lines = [json.dumps({"id": f"q{i}", "image": str(p), "question": q}) for i, (p, q, _) in enumerate(images)]
    lines.insert(1, "{not json")
    lines.append(json.dumps({"id": "gone", "image": str(tmp_path / "missing.png"), "question": "what?"}))
    batch = tmp_path / "questions.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    answers = tmp_path / "answers.jsonl"
    out = _run("infer", "--batch", batch, "--out", answers, "--model", folder, "--quiet")
    assert out.returncode == 1
    assert f"{batch}:2" in out.stderr and "missing.png" in out.stderr and "2 failed" in out.stderr
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    answered = {r["id"]: r["answer"] for r in records if "answer" in r}
    assert answered == {"q0": images[0][2], "q1": images[1][2]}
    # Rerun: done ids are skipped, nothing is answered twice.
    out = _run("infer", "--batch", batch, "--out", answers, "--model", folder)
    assert "2 already answered" in out.stderr
    again = [json.loads(line) for line in answers.read_text().splitlines()]
    assert sum("answer" in r for r in again) == 2


def test_segment_writes_mask_and_json(tmp_path, noise_image):
    path = tmp_path / "img.png"
    noise_image.save(path)
    out = _run("segment", path, "the disc", "--model", "tiny", "--save-mask", tmp_path / "mask.png", "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["mask"]["size"] == [180, 240]
    with Image.open(tmp_path / "mask.png") as m:
        assert m.size == (240, 180)


@pytest.mark.parametrize(
    "args, message",
    [
        (["infer", "missing.png", "q"], "image not found"),  # before the default model is loaded
        (["infer", "missing.png", "q", "--model", "tiny"], "image not found"),
        (["infer", "notimage.png", "q"], "cannot read image"),
        (["infer", "img.png", "   "], "question is empty"),
        (["infer", "img.png", "q", "--roi", "box"], "Invalid value for '--roi'"),  # the usage line, exit 2
        (["infer", "img.png", "q", "--model", "nope"], "model folder not found"),
        (["infer", "--batch", "q.jsonl"], "--batch needs --out"),
        (["segment", "img.png", ""], "expression is empty"),
    ],
)
def test_bad_input_is_one_line(tmp_path, noise_image, args, message):
    noise_image.save(tmp_path / "img.png")
    (tmp_path / "notimage.png").write_text("hello")
    out = _run(*args, cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr


def test_huge_image_is_refused(tmp_path, monkeypatch):
    from seganswer_cli.errors import ImageReadError
    from seganswer_cli.images import load_image

    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    with pytest.raises(ImageReadError, match="too large"):
        load_image(path, max_pixels=100_000)


def test_no_answer_is_a_result_with_its_own_exit_code(monkeypatch, capsys, tmp_path, noise_image):
    """A model that stops without an answer: the record says why (answer null), and the exit code is 3,
    not 1 (failure) or 2 (bad input), so that scripts can tell them apart."""
    from seganswer_cli.cli import main
    from seganswer_cli.reasoning import ReasoningLoop

    def preamble_then_stop(self, logits, generators):  # "To" then end of turn: a fragment, no answer
        row_tokens = self.tokenizer.encode("To")
        self._said = getattr(self, "_said", 0) + 1
        return [(row_tokens[0] if self._said == 1 else self.model.token_ids.im_end, 0.0)] * logits.shape[0]

    monkeypatch.setattr(ReasoningLoop, "_choose", preamble_then_stop)
    image = tmp_path / "noise.png"
    noise_image.save(image)
    monkeypatch.setattr(sys, "argv", ["seganswer", "infer", str(image), "What is it?", "--model", "tiny", "--json"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    assert exit_info.value.code == 3
    record = json.loads(out.out)
    assert record["answer"] is None and record["answer_source"] == "missing"
    assert record["answer_reason"] == "preamble" and record["turns"][0].startswith("To")
    assert out.err.strip().count("\n") == 0 and "no answer" in out.err and "preamble" in out.err
