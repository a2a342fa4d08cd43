"""Every path a command writes is checked when the command line is parsed: one line naming it, a
non-zero exit, nothing written, nothing overwritten; results are printed before figures are written;
an OS error while writing is one line; an answer cut off by the token limit is no answer."""

import hashlib
import json
import sys

import pytest
from PIL import Image

from cli_helpers import run_cli
from seganswer_cli.cli import main


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root) -> dict:
    """Every file under ``root`` with its checksum."""
    return {str(p.relative_to(root)): sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def place(tmp_path, noise_image, monkeypatch):
    """A working folder with an image, a regular file, a batch file and a folder, as the cwd."""
    noise_image.save(tmp_path / "img.png")
    (tmp_path / "file.txt").write_text("a regular file\n")
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "a", "image": "img.png", "question": "what?"}) + "\n")
    (tmp_path / "folder.png").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


NOT_A_FOLDER = "{root}/file.txt is a file, not a folder"
PROC = "cannot write in /proc (its file system takes no new files)"
IMAGE_SUFFIXES = "name the file .png, .jpg, .jpeg, .webp, .bmp, .tif, .tiff, .gif, .pdf"

CASES = [
    (["infer", "img.png", "q", "--save-vis", "file.txt/fig.png"], f"--save-vis file.txt/fig.png: {NOT_A_FOLDER}"),
    (["infer", "img.png", "q", "--save-vis", "/proc/seganswer/fig.png"], f"--save-vis /proc/seganswer/fig.png: {PROC}"),
    (["infer", "img.png", "q", "--save-vis", "fig.xyz"], f"--save-vis fig.xyz: unknown image extension '.xyz'; {IMAGE_SUFFIXES}"),
    (["infer", "img.png", "q", "--save-vis", "fig"], f"--save-vis fig: no file extension; {IMAGE_SUFFIXES}"),
    (["infer", "img.png", "q", "--save-vis", "folder.png"], "--save-vis folder.png: folder.png is a folder, not a file"),
    (["infer", "img.png", "q", "--save-vis", "img.png"],
     "--save-vis img.png is the input image: writing it would destroy it; choose another file"),
    (["infer", "img.png", "q", "--save-vis", "./sub/../img.png"],
     "--save-vis sub/../img.png is the input image: writing it would destroy it; choose another file"),
    (["segment", "img.png", "the disc", "--save-mask", "mask.jpg"],
     "--save-mask mask.jpg: unknown lossless image extension '.jpg'; name the file .png, .bmp, .tif, .tiff"),
    (["segment", "img.png", "the disc", "--save-mask", "img.png"],
     "--save-mask img.png is the input image: writing it would destroy it; choose another file"),
    (["segment", "img.png", "the disc", "--save-mask", "m.png", "--save-vis", "m.png"],
     "--save-mask m.png is the --save-vis file: writing it would destroy it; choose another file"),
    (["segment", "img.png", "the disc", "--save-vis", "file.txt/v.png"], f"--save-vis file.txt/v.png: {NOT_A_FOLDER}"),
    (["infer", "--batch", "q.jsonl", "--out", "answers.json"],
     "--out answers.json: unknown JSON Lines extension '.json'; name the file .jsonl"),
    (["infer", "--batch", "q.jsonl", "--out", "q.jsonl"],
     "--out q.jsonl is the batch file: writing it would destroy it; choose another file"),
    (["infer", "--batch", "q.jsonl", "--out", "/proc/answers.jsonl"], f"--out /proc/answers.jsonl: {PROC}"),
    (["eval", "shapes-vqa", "--out", "file.txt"], "--out file.txt: file.txt is a file, not a folder"),
    (["eval", "run", "shapes-vqa", "--out", "file.txt/run"], f"--out file.txt/run: {NOT_A_FOLDER}"),
    (["eval", "sheet", "run", "--out", "sheet.svg"], f"--out sheet.svg: unknown image extension '.svg'; {IMAGE_SUFFIXES}"),
    (["eval", "sheet", "run", "--out", "/proc/sheet.png"], f"--out /proc/sheet.png: {PROC}"),
    (["train-stage1", "--data", "s=data", "--out", "file.txt/run"], f"--out file.txt/run: {NOT_A_FOLDER}"),
    (["train-stage2", "--data", "s=data", "--out", "/proc/run"], f"--out /proc/run: {PROC}"),
    (["train-stage3", "--data", "s=data", "--out", "file.txt"], "--out file.txt: file.txt is a file, not a folder"),
    (["pretrain-standin", "--data", "s=data", "--out", "file.txt"], "--out file.txt: file.txt is a file, not a folder"),
    (["data", "synth", "--out", "/proc/shapes"], f"--out /proc/shapes: {PROC}"),
    (["data", "synth", "--out", "file.txt/shapes"], f"--out file.txt/shapes: {NOT_A_FOLDER}"),
    (["data", "inspect", ".", "--contact-sheet", "sheet.txt"],
     f"--contact-sheet sheet.txt: unknown image extension '.txt'; {IMAGE_SUFFIXES}"),
    (["plot", "run", "--out", "curves.txt"], f"--out curves.txt: unknown image extension '.txt'; {IMAGE_SUFFIXES}"),
    (["plot", "run", "--out", "file.txt/curves.png"], f"--out file.txt/curves.png: {NOT_A_FOLDER}"),
    (["model", "init", "tiny", "--out", "file.txt"], "--out file.txt: file.txt is a file, not a folder"),
    (["model", "init", "tiny", "--out", "/proc/model"], f"--out /proc/model: {PROC}"),
    (["model", "convert-sam", "sam.pt", "--out", "file.txt/sam"], f"--out file.txt/sam: {NOT_A_FOLDER}"),
    (["merge-lora", "run", "file.txt/merged"], f"OUT_DIR file.txt/merged: {NOT_A_FOLDER}"),
]


@pytest.mark.parametrize(("args", "line"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_an_output_that_cannot_be_written_is_refused_when_parsed(monkeypatch, capsys, place, args, line):
    before = tree(place)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert (code, out, err) == (2, "", f"error: {line.format(root=place)}\n")
    assert tree(place) == before  # the input image, the batch file: unchanged; nothing new


def test_outputs_that_can_be_written_pass(tmp_path):
    """The checks refuse only what cannot work: a new nested folder, an existing file, a new file."""
    from seganswer_cli.cli.options import output_problem

    (tmp_path / "old.png").write_bytes(b"x")
    assert output_problem(tmp_path / "a" / "b" / "fig.png", folder=False) is None
    assert output_problem(tmp_path / "old.png", folder=False) is None
    assert output_problem(tmp_path / "a" / "run", folder=True) is None
    assert output_problem(tmp_path, folder=True) is None
    assert list(tmp_path.iterdir()) == [tmp_path / "old.png"]  # nothing created by the checks


def scripted(text: str):
    """A ``ReasoningLoop._choose`` that writes ``text`` token by token, then ends its turn."""

    def choose(self, logits, generators):  # every row of the batch says the same
        ids = self.tokenizer.encode(text)
        self._said = getattr(self, "_said", -1) + 1
        return [(ids[self._said] if self._said < len(ids) else self.model.token_ids.im_end, 0.0)] * logits.shape[0]

    return choose


def test_the_answer_is_printed_before_the_figure_and_a_failed_write_is_one_line(monkeypatch, capsys, place):
    """The figure's folder vanishes (or the disk fills) after the checks: the answer is on stdout all
    the same, stderr has one line naming the figure, the old figure is intact, no partial file is left."""
    from seganswer_cli.reasoning import ReasoningLoop

    monkeypatch.setattr(ReasoningLoop, "_choose", scripted("<answer> red </answer>"))
    (place / "figs").mkdir()
    old = place / "figs" / "fig.png"
    Image.new("RGB", (4, 4)).save(old)
    before = tree(place)

    def full_disk(self, fp, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    code, out, err = run_cli(monkeypatch, capsys, "infer", "img.png", "What colour?", "--model", "tiny",
                             "--save-vis", old, "--json")
    assert json.loads(out)["answer"] == "red"
    assert (code, err) == (1, f"error: cannot write {old}: No space left on device\n")
    assert tree(place) == before


def test_a_written_figure_is_complete(monkeypatch, capsys, place):
    from seganswer_cli.reasoning import ReasoningLoop

    monkeypatch.setattr(ReasoningLoop, "_choose", scripted("<answer> red </answer>"))
    code, out, err = run_cli(monkeypatch, capsys, "infer", "img.png", "What colour?", "--model", "tiny",
                             "--save-vis", "out/fig.jpg", "--quiet")
    assert code in (0, None), err
    with Image.open(place / "out" / "fig.jpg") as fig:
        assert fig.format == "JPEG" and fig.width > 100
    assert sorted(p.name for p in (place / "out").iterdir()) == ["fig.jpg"]


def test_an_os_error_at_the_boundary_is_one_line(monkeypatch, capsys, place):
    """An OS error from code without a helper of its own (a training run, data synth) is one line
    naming the path, exit 1 (SEGANSWER_DEBUG=1 shows the traceback)."""
    import seganswer_cli.data.shapes_datasets as shapes

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(place / "shapes" / "records.jsonl"))

    monkeypatch.setattr(shapes, "write_synthetic", denied)
    code, out, err = run_cli(monkeypatch, capsys, "data", "synth", "--n", "1", "--out", "shapes", "--json")
    assert (code, out, err) == (1, "", f"error: {place}/shapes/records.jsonl: Permission denied\n")
    monkeypatch.setenv("SEGANSWER_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["seganswer", "data", "synth", "--n", "1", "--out", "shapes"])
    with pytest.raises(PermissionError):
        main()


def test_an_answer_cut_off_by_the_token_limit_is_no_answer(monkeypatch, capsys, place):
    """The issue's case: "To fin" at the token limit was printed as the answer with exit 0. It is
    reported as stopped by the limit, the text shown as partial, exit 3 (no answer)."""
    from seganswer_cli.reasoning import ReasoningLoop

    monkeypatch.setattr(ReasoningLoop, "_choose", scripted("<answer> To fin"))
    from seganswer_cli.model import SegAnswerModel

    n = len(SegAnswerModel.from_pretrained("tiny").tokenizer.encode("<answer> To fin"))
    args = ["infer", "img.png", "Where?", "--model", "tiny", "--max-new-tokens", n]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--json")
    record = json.loads(out)
    assert code == 3 and record["stop_reason"] == "length"
    assert (record["answer"], record["partial_answer"], record["answer_reason"]) == (None, "To fin", "token_limit")
    assert err == (f"error: no answer: the token limit (--max-new-tokens {n}) stopped the model before it "
                   "finished; partial text: 'To fin'\n")
    code, out, err = run_cli(monkeypatch, capsys, *args, "--quiet")
    assert code == 3
    assert "(none: cut off by the token limit)" in out and "partial  To fin" in " ".join(out.split("│"))
    # One token more and the answer closes: an answer, exit 0.
    monkeypatch.setattr(ReasoningLoop, "_choose", scripted("<answer> To fin </answer>"))
    code, out, err = run_cli(monkeypatch, capsys, "infer", "img.png", "Where?", "--model", "tiny", "--json")
    assert code in (0, None) and json.loads(out)["answer"] == "To fin"


def test_validation_lines_go_to_stderr_at_every_step(monkeypatch, capsys, tmp_path):
    """Stage 1's validation lines: progress, on stderr at step 0 as at later steps; stdout keeps results."""
    from seganswer_cli.data import ShapesConfig, write_synthetic

    data = write_synthetic(tmp_path / "shapes", "refseg", 4, ShapesConfig(width=64, height=64, min_size=16,
                                                                          max_size=32), seed=0)
    code, out, err = run_cli(monkeypatch, capsys, "train-stage1", "--data", f"s={data}", "--val-data", data,
                             "--max-steps", 2, "--eval-every", 1, "--batch-size", 2, "--out", tmp_path / "run")
    assert code in (0, None), err
    assert "val gIoU" not in out
    assert [line.split(":")[0] for line in err.splitlines() if "val gIoU" in line] == ["step 0", "step 1", "step 2"]
