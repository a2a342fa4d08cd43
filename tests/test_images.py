"""The one image loader: EXIF orientation applied, our size limit the one in force, one-line errors;
and a phone-style rotated photo answered and drawn upright by ``seganswer infer``."""

import hashlib
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cli_helpers import run_cli
from seganswer_cli.errors import ImageReadError
from seganswer_cli.images import MAX_IMAGE_PIXELS, load_image

ROTATE_90 = 6  # EXIF Orientation: the stored bitmap must be turned 90° clockwise to be upright


def tagged_jpeg(upright: Image.Image, orientation: int = ROTATE_90) -> bytes:
    """``upright`` stored the way a phone stores a portrait shot: the bitmap turned 90° counter-clockwise
    and an EXIF tag saying how to turn it back."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds none: a huge image in a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((40, 100, 3), np.uint8)  # (H, W, 3): landscape
    upright[:8] = 255  # a white band along the top
    path = tmp_path / "photo.jpg"
    path.write_bytes(tagged_jpeg(Image.fromarray(upright)))
    with Image.open(path) as stored:
        assert stored.size == (40, 100)  # what is in the file: portrait, band on the left
    for source in (path, path.read_bytes()):
        image = load_image(source)
        assert image.size == (100, 40) and image.mode == "RGB"
        pixels = np.asarray(image)  # (40, 100, 3)
        assert pixels[:8].mean() > 240 and pixels[12:].mean() < 15  # the band is on top again


def test_untagged_images_load_as_stored(tmp_path, noise_image):
    path = tmp_path / "plain.png"
    noise_image.save(path)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(noise_image))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_shown_over_white(tmp_path, mode):
    """A transparent background loads as a viewer shows it (white), whatever colour lies under it."""
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # transparent black
    rgba.paste((200, 30, 30, 255), (10, 10, 20, 20))
    path = tmp_path / f"{mode}.png"
    if mode == "P":
        img = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        black = img.getpixel((0, 0))
        img.save(path, transparency=black)
    else:
        rgba.convert(mode).save(path)
    pixels = np.asarray(load_image(path))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    expected = (200, 30, 30) if mode != "LA" else (tuple(np.asarray(rgba.convert("L"))[15, 15].repeat(3)))
    assert tuple(pixels[15, 15]) == tuple(expected)
    assert tuple(np.asarray(load_image(Image.open(path)))[0, 0]) == (255, 255, 255)  # an opened image too


def test_our_size_limit_is_the_one_in_force(tmp_path):
    """Over our limit: our line, from the header, before decoding. Between Pillow's default guard
    (89.5 MP) and ours (134 MP): not Pillow's "decompression bomb" text (this header holds no pixel
    data, so decoding fails as a truncated file). Pillow's own guard is left as it was."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    big = tmp_path / "big.png"
    big.write_bytes(png_header(12000, 12000))
    with pytest.raises(ImageReadError) as refused:
        load_image(big)
    assert str(refused.value) == (f"image too large: {big} is 12000x12000 (144000000 pixels > limit "
                                  f"{MAX_IMAGE_PIXELS})")
    assert MAX_IMAGE_PIXELS == 134217728 > 132_000_000 > pillow_limit
    within = tmp_path / "132mp.png"
    within.write_bytes(png_header(11500, 11480))  # 132 MP
    with pytest.raises(ImageReadError) as failed:
        load_image(within)
    assert str(failed.value).startswith(f"cannot read image {within}: ") and "decompression" not in str(failed.value)
    assert pillow_limit == Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError, match=r"image too large: <\d+ bytes> is 400x300 \(120000 pixels > limit 100000\)"):
        load_image(png_header(400, 300), max_pixels=100_000)


def test_broken_images_are_one_line(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    jpeg = tagged_jpeg(Image.new("RGB", (64, 48), "red"))
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    for name, message in (("text.png", "cannot identify image file"), ("cut.jpg", "(?i)truncated"),
                          ("gone.png", "image not found")):
        with pytest.raises(ImageReadError, match=message) as e:
            load_image(tmp_path / name)
        assert "\n" not in str(e.value)


@pytest.fixture
def patterned_cli(monkeypatch, patterned_model):
    """``seganswer infer`` in this process, its model loader serving the session's patterned model."""

    model, cases = patterned_model
    monkeypatch.setattr("seganswer_cli.cli.infer.load_model", lambda spec, device="auto", dtype="auto": model)

    def invoke(capsys, *args):
        return run_cli(monkeypatch, capsys, *args)

    return invoke, cases


@pytest.mark.slow  # the patterned model's training (session fixture): seconds alone, minutes on a shared CPU
def test_a_rotated_photo_is_answered_and_drawn_upright(patterned_cli, capsys, tmp_path):
    """The patterned model answers its first case; stored sideways with the EXIF tag, the same picture
    is answered the same, its mask has the upright (H, W) and its figure the upright run's size."""
    invoke, cases = patterned_cli
    image, question, _, answer = cases[0]  # 240x180 (W x H)
    image.save(tmp_path / "upright.png")
    (tmp_path / "phone.jpg").write_bytes(tagged_jpeg(image))
    records, figures = {}, {}
    for name in ("upright.png", "phone.jpg"):
        code, out, err = invoke(capsys, "infer", tmp_path / name, question, "--model", "tiny", "--json",
                                "--save-vis", tmp_path / f"{name}.vis.png")
        assert code == 0, err
        records[name] = json.loads(out)
        with Image.open(tmp_path / f"{name}.vis.png") as figure:
            figures[name] = figure.size
    for record in records.values():
        assert record["answer"] == answer
        (step,) = record["steps"]
        assert step["mask"]["size"] == [180, 240]  # (H, W) upright; sideways would be [240, 180]
    assert records["phone.jpg"]["steps"][0]["crop_box"] == records["upright.png"]["steps"][0]["crop_box"]
    assert figures["phone.jpg"] == figures["upright.png"]
    assert hashlib.sha256((tmp_path / "phone.jpg").read_bytes()).hexdigest() == hashlib.sha256(
        tagged_jpeg(image)).hexdigest()  # the input is read, never rewritten
