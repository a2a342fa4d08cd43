"""Pictures the shapes world's generator never made, asked the way a user asks (docs/shapes-experiment.md).

Draws simple coloured-shape pictures with Pillow's own primitives — other shades of the four
colours, anti-aliased or not, outlined or not, on white, beige, dark, light grey or gradient
backgrounds, at sizes and aspect ratios the recipe's worlds do and do not use — and saves each in
a file type users have (PNG, JPEG, CMYK JPEG, an EXIF-rotated JPEG, palette GIF, WebP, a transparent
PNG, a PNG named .jpg). Each picture is asked in several phrasings and formats (free text,
V*-style multiple choice, yes/no), through ``seganswer infer --json`` as a user runs it.

    python recipes/outside-pictures.py MODEL [--out runs/outside] [--seed 0] [--pictures 16]

Prints per question: file, question, answer, truth, whether the model segmented; then the share
answered, right, and segmented, per format. Writes OUT/results.json and the pictures.
Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

#: Shades unlike the generator's exact RGB (data/shapes_scenes.py COLOURS), several per name.
SHADES = {
    "red": [(200, 20, 30), (255, 70, 60), (180, 40, 40)],
    "green": [(30, 150, 50), (80, 200, 90), (20, 120, 60)],
    "blue": [(30, 60, 200), (70, 120, 255), (20, 40, 160)],
    "yellow": [(255, 220, 0), (230, 200, 60), (250, 235, 90)],
}
BACKGROUNDS = {"white": (255, 255, 255), "beige": (240, 230, 210), "light grey": (215, 215, 215),
               "dark": (40, 40, 50), "gradient": None}
KINDS = ("circle", "square", "triangle", "star")
SIZES = [(640, 480), (500, 500), (1024, 576), (300, 420), (800, 300), (256, 256)]
FILE_TYPES = ["png", "jpeg", "cmyk-jpeg", "exif-rotated-jpeg", "gif", "webp", "transparent-png", "png-named-jpg"]


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill, outline) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if kind == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=2 if outline else 0)
    elif kind == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=2 if outline else 0)
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline)
    else:
        draw.polygon(_star(cx, cy, r), fill=fill, outline=outline)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    import math

    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def picture(rng: random.Random) -> tuple[Image.Image, list[dict]]:
    """A picture and its shapes (colour, kind, side), none overlapping."""
    width, height = rng.choice(SIZES)
    background = rng.choice(list(BACKGROUNDS))
    if background == "gradient":
        img = Image.linear_gradient("L").resize((width, height)).point(lambda v: 150 + v // 3).convert("RGB")
    else:
        img = Image.new("RGB", (width, height), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)
    shapes, boxes = [], []
    count = rng.randint(1, 5)
    short = min(width, height)
    for _attempt in range(200):
        if len(shapes) == count:
            break
        side = rng.randint(max(16, short // 16), max(20, short // 4))
        x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
        box = (x0, y0, x0 + side, y0 + side)
        if any(not (box[2] + 4 < b[0] or b[2] + 4 < box[0] or box[3] + 4 < b[1] or b[3] + 4 < box[1]) for b in boxes):
            continue
        colour, kind = rng.choice(list(SHADES)), rng.choice(KINDS)
        if any(s["colour"] == colour and s["kind"] == kind for s in shapes):
            continue  # every (colour, kind) at most once: the questions below have one answer
        outline = (0, 0, 0) if rng.random() < 0.3 else None
        draw_shape(draw, kind, box, rng.choice(SHADES[colour]), outline)
        shapes.append({"colour": colour, "kind": kind, "side": side})
        boxes.append(box)
    return img, shapes


def questions(rng: random.Random, shapes: list[dict]) -> list[dict]:
    """A colour question, a kind question, a yes/no question and a multiple-choice one."""
    target = min(shapes, key=lambda s: s["side"]) if len(shapes) > 1 else shapes[0]
    one_kind = sum(s["kind"] == target["kind"] for s in shapes) == 1
    one_colour = sum(s["colour"] == target["colour"] for s in shapes) == 1
    asked = []
    if one_kind:
        asked.append({"format": "free", "question": rng.choice([
            f"What colour is the {target['kind']}?", f"What is the color of the {target['kind']}?",
            f"Which colour does the {target['kind']} have?"]), "truth": target["colour"]})
    if one_colour:
        asked.append({"format": "free", "question": rng.choice([
            f"What shape is the {target['colour']} object?", f"What kind of shape is {target['colour']}?",
            f"Which shape is {target['colour']}?"]), "truth": target["kind"]})
        options = [target["kind"], *rng.sample([k for k in KINDS if k != target["kind"]], 3)]
        rng.shuffle(options)
        letters = "ABCD"
        lines = "\n".join(f"({letters[i]}) {o}" for i, o in enumerate(options))
        asked.append({"format": "vstar", "question": f"What is the shape of the {target['colour']} object?\n{lines}\n"
                      "Answer with the option's letter from the given choices directly.",
                      "truth": letters[options.index(target["kind"])]})
    present = rng.random() < 0.5
    colour, kind = (target["colour"], target["kind"]) if present else next(
        (c, k) for c in rng.sample(list(SHADES), 4) for k in rng.sample(KINDS, 4)
        if not any(s["colour"] == c and s["kind"] == k for s in shapes))
    asked.append({"format": "yesno", "question": f"Is there a {colour} {kind} in the image?",
                  "truth": "yes" if present else "no"})
    return asked


def save(img: Image.Image, folder: Path, index: int, kind: str) -> Path:
    name = folder / f"picture-{index:02d}"
    if kind == "png":
        path = name.with_suffix(".png")
        img.save(path)
    elif kind == "jpeg":
        path = name.with_suffix(".jpg")
        img.save(path, quality=85)
    elif kind == "cmyk-jpeg":
        path = name.with_suffix(".jpg")
        img.convert("CMYK").save(path, quality=90)
    elif kind == "exif-rotated-jpeg":  # stored sideways, tagged "rotate 90° clockwise to view"
        path = name.with_suffix(".jpg")
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
    elif kind == "gif":
        path = name.with_suffix(".gif")
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(path)
    elif kind == "webp":
        path = name.with_suffix(".webp")
        img.save(path, quality=85)
    elif kind == "transparent-png":  # the background colour made transparent
        path = name.with_suffix(".png")
        rgba = img.convert("RGBA")
        bg = img.getpixel((0, 0))
        rgba.putdata([(r, g, b, 0) if (r, g, b) == bg else (r, g, b, 255) for r, g, b, _ in rgba.get_flattened_data()])
        rgba.save(path)
    else:  # png-named-jpg
        path = name.with_suffix(".jpg")
        img.save(path, format="PNG")
    return path


def correct(answer: str | None, truth: str) -> bool:
    if answer is None:
        return False
    text = answer.strip().strip(".").strip().lower()
    if len(truth) == 1:  # an option letter: "B", "(B)", "B. star"
        return text.strip("()").split(")")[0].split(".")[0].strip().upper() == truth
    return truth in text.replace("color", "colour").split() or text == truth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--out", default="runs/outside", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pictures", type=int, default=16)
    parser.add_argument("--seganswer", default="seganswer", help="the executable")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    (args.out / "pictures").mkdir(parents=True, exist_ok=True)
    batch, meta = [], []
    for index in range(args.pictures):
        img, shapes = picture(rng)
        kind = FILE_TYPES[index % len(FILE_TYPES)]
        path = save(img, args.out / "pictures", index, kind)
        for q in questions(rng, shapes):
            meta.append({"file": path.name, "file_type": kind, "size": img.size, **q})
            batch.append({"id": len(batch), "image": str(path.resolve()), "question": q["question"]})
    questions_file = args.out / "questions.jsonl"
    questions_file.write_text("".join(json.dumps(b) + "\n" for b in batch))
    answers = args.out / "answers.jsonl"
    answers.unlink(missing_ok=True)
    subprocess.run([args.seganswer, "infer", "--batch", str(questions_file), "--out", str(answers),
                    "--model", args.model, "-q"], check=False)
    records = {str(r["id"]): r for r in map(json.loads, answers.read_text().splitlines())}
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    results = []
    for entry, m in zip(batch, meta):
        r = records.get(str(entry["id"]), {})
        answer = r.get("answer")
        row = {**m, "answer": answer, "correct": correct(answer, m["truth"]),
               "segmented": bool(r.get("steps")), "error": r.get("error")}
        results.append(row)
        for key in (m["format"], "all"):
            t = totals[key]
            for i, value in enumerate((1, answer is not None, row["correct"], row["segmented"])):
                t[i] += value
        print(f"{m['file']:<22} {m['format']:<6} {m['question'].splitlines()[0][:48]:<48} "
              f"-> {str(answer)[:16]:<16} truth {m['truth']:<8} {'ok' if row['correct'] else '--'} "
              f"{'seg' if row['segmented'] else ''}")
    summary = {k: {"n": t[0], "answered": t[1] / t[0], "correct": t[2] / t[0], "segmented": t[3] / t[0]}
               for k, t in totals.items()}
    for k, v in summary.items():
        print(f"{k:<6} n {v['n']:>3}  answered {v['answered']:.2f}  right {v['correct']:.2f}  segmented {v['segmented']:.2f}")
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
