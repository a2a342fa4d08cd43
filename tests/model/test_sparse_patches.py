"""The sparse-position patch encoder, anchored to transformers' own ``get_rope_index`` (on each
backbone: Qwen2.5-VL and Qwen3-VL, whose DeepStack features ride along)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from seganswer_cli.errors import EmptyMaskError, MaskShapeError
from seganswer_cli.model import tokens
from seganswer_cli.model.conversation import stage1_sequence
from seganswer_cli.model.sequence import VisualSlot
from seganswer_cli.model.sparse_patches import build_segmented_view, cell_coverage, keep_cells


def _prompt_text(expression="the red triangle"):
    return (
        tokens.system_turn() + tokens.user_turn_open() + tokens.image_placeholder()
        + tokens.stage1_prompt(expression) + tokens.turn_close() + tokens.assistant_turn_open()
        + tokens.STAGE1_RESPONSE + tokens.IM_END + "\n"
    )


def test_full_mask_without_zoom_equals_plain_image_and_get_rope_index(backbone_model, noise_image):
    model = backbone_model
    ref = model.processor(text=[_prompt_text()], images=[noise_image], return_tensors="pt")
    ref_pos, _ = model.mllm.model.get_rope_index(
        ref["input_ids"], ref["mm_token_type_ids"], image_grid_thw=ref["image_grid_thw"],
        attention_mask=ref["attention_mask"],
    )

    dense = model.global_view(noise_image)
    full = np.ones((noise_image.height, noise_image.width), bool)
    view = model.segmented_view(noise_image, full, zoom=False)

    # The view is the plain image: same pixels, all cells, positions = the dense grid.
    assert view.num_tokens == dense.num_tokens
    assert torch.equal(view.crop.pixel_values, dense.pixel_values)
    assert torch.equal(view.crop.grid_thw, dense.grid_thw)
    assert torch.equal(view.positions, dense.relative_positions())

    seq = stage1_sequence(model, dense, "the red triangle")
    assert torch.equal(seq.input_ids, ref["input_ids"][0])
    assert torch.equal(seq.position_ids, ref_pos[:, 0].float())

    # Fill the image slot with the view's features: the logits equal the plain forward's.
    seq.visuals = [VisualSlot(start=seq.visuals[0].start, image=view.crop, keep=view.keep)]
    with torch.no_grad():
        plain = model.mllm(**ref).logits
        batch = model.collate([seq])
        hidden = model.language_model(model.embed(batch), batch.position_ids, batch.attention_mask).last_hidden_state
        ours = model.logits(hidden)
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-5)


def test_positions_and_deepstack_features_change_the_logits(backbone_model, noise_image):
    """Guard for the reference above, on each backbone: the same tokens at 1-D positions give other
    logits, and so (Qwen3-VL) do the visual tokens without their DeepStack features."""
    model = backbone_model
    seq = stage1_sequence(model, model.global_view(noise_image), "the red triangle")
    batch = model.collate([seq])
    flat = torch.arange(len(seq)).float().expand(3, 1, -1)  # (3, 1, S)
    with torch.no_grad():
        inputs = model.embed(batch)
        ours = model.language_model(inputs, batch.position_ids).last_hidden_state
        assert not torch.allclose(model.language_model(inputs, flat).last_hidden_state, ours, atol=1e-4)
        if inputs.deepstack is not None:
            bare = replace(inputs, visual_mask=None, deepstack=None)
            assert not torch.allclose(model.language_model(bare, batch.position_ids).last_hidden_state, ours, atol=1e-4)
    assert (inputs.deepstack is not None) == (model.mllm.config.model_type == "qwen3_vl")


def test_a_sparse_turn_carries_only_its_kept_cells_features(backbone_model, noise_image, blob_mask):
    """The second look's tokens are filled with the crop's features of the kept cells, in order, and
    on Qwen3-VL each DeepStack level gives the same cells' features to the same tokens."""
    from seganswer_cli.model.backbones import encode_images
    from seganswer_cli.model.conversation import reasoning_sequence

    model = backbone_model
    dense = model.global_view(noise_image)
    view = model.segmented_view(noise_image, blob_mask, zoom=False)
    assert 0 < view.num_tokens < view.crop.num_tokens  # a sparse turn: some cells dropped
    batch = model.collate([reasoning_sequence(model, dense, "What colour is it?", "red", view=view)])
    with torch.no_grad():
        inputs = model.embed(batch)
        first = encode_images(model.mllm, dense.pixel_values, dense.grid_thw[None])
        crop = encode_images(model.mllm, view.crop.pixel_values, view.crop.grid_thw[None])
    pads = batch.input_ids[0] == model.token_ids.image_pad  # (S,)
    expected = torch.cat([first.tokens[0], crop.tokens[0][view.keep]])  # (dense + kept, D)
    torch.testing.assert_close(inputs.embeds[0][pads], expected, rtol=0, atol=1e-6)
    if first.deepstack is None:
        assert inputs.deepstack is None and inputs.visual_mask is None
        return
    assert torch.equal(inputs.visual_mask[0], pads)
    assert len(inputs.deepstack) == len(model.mllm.config.vision_config.deepstack_visual_indexes) >= 2
    for level, (dense_level, crop_level) in enumerate(zip(first.deepstack, crop.deepstack)):
        torch.testing.assert_close(inputs.deepstack[level], torch.cat([dense_level[0], crop_level[0][view.keep]]),
                                   rtol=0, atol=1e-6)


def test_forward_silently_differs_without_3d_positions(tiny_model, noise_image):
    """Guard for the reference above: 1-D positions change the logits, so the check has teeth."""
    model = tiny_model
    ref = model.processor(text=[_prompt_text()], images=[noise_image], return_tensors="pt")
    with torch.no_grad():
        plain = model.mllm(**ref).logits
        flat = model.mllm(**{k: v for k, v in ref.items() if k != "mm_token_type_ids"}).logits
    assert not torch.allclose(plain, flat, atol=1e-5)


def _expected_cells(mask, rows, cols):
    """Cells whose native footprint [r*H/rows, (r+1)*H/rows) x ... holds any mask pixel, by brute force."""
    H, W = mask.shape
    out = np.zeros((rows, cols), bool)
    for r in range(rows):
        for c in range(cols):
            y0, y1 = int(np.floor(r * H / rows)), int(np.ceil((r + 1) * H / rows))
            x0, x1 = int(np.floor(c * W / cols)), int(np.ceil((c + 1) * W / cols))
            out[r, c] = mask[y0:y1, x0:x1].any()
    return out


def test_partial_mask_keeps_exactly_the_overlapped_cells_at_original_positions(tiny_model, noise_image, blob_mask):
    model = tiny_model
    dense = model.global_view(noise_image)
    rows, cols = dense.grid
    view = model.segmented_view(noise_image, blob_mask, zoom=False)

    expected = _expected_cells(blob_mask, rows, cols)
    kept = set(zip(view.positions[1].long().tolist(), view.positions[2].long().tolist()))
    assert kept == set(zip(*np.nonzero(expected)))
    # Positions are the original grid coordinates, t at the image's base.
    assert torch.equal(view.positions, view.positions.round())
    assert (view.positions[0] == 0).all()
    # Each kept token's features come from its own cell of the global view: same pixels.
    patch_rows = dense.pixel_values.view(rows, cols, 4, -1)
    r0, c0, r1, c1 = view.cell_box
    crop_rows = view.crop.pixel_values.view(r1 - r0, c1 - c0, 4, -1)
    inside = view.overlap == 1.0
    assert inside.any()
    for idx in torch.nonzero(inside.flatten()).flatten().tolist():
        i, j = divmod(idx, c1 - c0)
        assert torch.equal(crop_rows[i, j], patch_rows[r0 + i, c0 + j])

    bbox = model.segmented_view(noise_image, blob_mask, mode="bbox", zoom=False)
    assert bbox.num_tokens == (r1 - r0) * (c1 - c0)
    assert view.num_tokens < bbox.num_tokens
    assert bbox.positions is None


def test_zoom_encodes_finer_and_keeps_real_valued_positions_inside_the_box(tiny_model, noise_image, blob_mask):
    model = tiny_model
    small = np.zeros_like(blob_mask)
    small[60:90, 100:130] = True  # a 30x30 target: ~1 cell in the global view
    no_zoom = model.segmented_view(noise_image, small, zoom=False)
    zoom = model.segmented_view(noise_image, small, zoom=True, zoom_min_pixels=28 * 28 * 16)
    assert zoom.crop.num_tokens > no_zoom.crop.num_tokens
    r0, c0, r1, c1 = zoom.cell_box
    h, w = zoom.positions[1], zoom.positions[2]
    assert (h > r0 - 0.5).all() and (h < r1 - 0.5).all()
    assert (w > c0 - 0.5).all() and (w < c1 - 0.5).all()
    assert not torch.equal(h, h.round())  # real-valued
    bbox = model.segmented_view(noise_image, small, mode="bbox", zoom=True, zoom_min_pixels=28 * 28 * 16)
    assert zoom.num_tokens <= bbox.num_tokens


def test_background_is_painted_out(tiny_model, noise_image, blob_mask):
    view = tiny_model.segmented_view(noise_image, blob_mask, zoom=False, background=(0, 0, 0))
    pixels = np.asarray(view.segmented_image)
    assert (pixels == 0).all(axis=2).mean() > 0.3  # the disc's box corners and the bar's surroundings
    bbox = tiny_model.segmented_view(noise_image, blob_mask, mode="bbox", zoom=False)
    assert (np.asarray(bbox.segmented_image) == 0).all(axis=2).mean() < 0.01


def test_min_overlap_drops_barely_touched_cells(tiny_model, noise_image, blob_mask):
    loose = tiny_model.segmented_view(noise_image, blob_mask, zoom=False, min_overlap=0.0)
    strict = tiny_model.segmented_view(noise_image, blob_mask, zoom=False, min_overlap=0.5)
    assert strict.num_tokens < loose.num_tokens
    assert (strict.overlap.flatten()[strict.keep] > 0.5).all()


def test_cell_coverage_and_keep_cells_on_an_exact_grid():
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 0] = True  # 1 of 4 pixels of cell (0, 0)
    mask[2:4, 4:6] = True  # all of cell (1, 2)
    cov = cell_coverage(mask, 2, 3)
    assert cov.tolist() == [[0.25, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert keep_cells(cov).tolist() == [[True, False, False], [False, False, True]]
    assert keep_cells(cov, 0.5).tolist() == [[False, False, False], [False, False, True]]
    with pytest.raises(ValueError):
        keep_cells(cov, 1.0)


def test_bad_masks_raise_clear_errors(tiny_model, noise_image):
    with pytest.raises(EmptyMaskError, match="empty"):
        tiny_model.segmented_view(noise_image, np.zeros((180, 240), bool))
    with pytest.raises(MaskShapeError, match="180x240"):
        tiny_model.segmented_view(noise_image, np.ones((100, 100), bool))
    with pytest.raises(ValueError, match="roi mode"):
        build_segmented_view(noise_image, np.ones((180, 240), bool), tiny_model.image_processor, mode="box")
    assert tiny_model.segmented_view(noise_image, np.ones((180, 240), bool), mode="none") is None


def _square_scene(h=180, w=240, box=(100, 60, 112, 72)):
    """Grey image with one red square (``box`` = x0, y0, x1, y1) and its mask."""
    pixels = np.full((h, w, 3), 128, np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = (255, 0, 0)
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return Image.fromarray(pixels), mask


def test_box_crop_zooms_on_the_mask_and_keeps_original_positions(tiny_model):
    image, mask = _square_scene()
    settings = dict(zoom=True, zoom_min_pixels=28 * 28 * 16, zoom_max_pixels=28 * 28 * 16)
    cells = tiny_model.segmented_view(image, mask, mode="bbox", **settings)
    box = tiny_model.segmented_view(image, mask, mode="bbox", crop="box", crop_margin=0.25, **settings)
    assert box.crop_box == (97, 57, 115, 75)  # the 12-px square grown by ceil(0.25 * 12) = 3 px
    red = lambda view: (np.asarray(view.segmented_image)[..., 1] < 60).mean()  # noqa: E731
    assert red(box) > 0.35 > 0.1 > red(cells)  # the target fills the zoomed box, not the cells' corner
    view = tiny_model.segmented_view(image, mask, crop="box", crop_margin=0.25, **settings)
    rows, cols = view.crop.grid
    H, W = image.height, image.width
    grows, gcols = tiny_model.global_view(image).grid
    # kept cells' centres, mapped to the global grid (cell centres at integers), lie inside the box
    x0, y0, x1, y1 = view.crop_box
    h, w = view.positions[1], view.positions[2]
    assert (h >= y0 * grows / H - 0.5).all() and (h <= y1 * grows / H - 0.5).all()
    assert (w >= x0 * gcols / W - 0.5).all() and (w <= x1 * gcols / W - 0.5).all()
    first = int(view.keep[0])
    i, j = divmod(first, cols)
    r0, c0, r1, c1 = view.cell_box  # the global cells under the crop
    assert (h > r0 - 0.5).all() and (h < r1 - 0.5).all() and (w > c0 - 0.5).all() and (w < c1 - 0.5).all()
    assert h[0].item() == pytest.approx((y0 + (i + 0.5) * (y1 - y0) / rows) * grows / H - 0.5, abs=1e-4)
    assert w[0].item() == pytest.approx((x0 + (j + 0.5) * (x1 - x0) / cols) * gcols / W - 0.5, abs=1e-4)


def test_box_crop_stays_inside_the_image_and_is_ignored_without_zoom(tiny_model):
    image, mask = _square_scene(box=(0, 170, 10, 180))  # bottom-left corner
    view = tiny_model.segmented_view(image, mask, zoom=True, crop="box", crop_margin=1.0)
    assert view.crop_box == (0, 160, 20, 180)
    plain = tiny_model.segmented_view(image, mask, zoom=False)
    boxed = tiny_model.segmented_view(image, mask, zoom=False, crop="box")
    assert boxed.crop_box == plain.crop_box and torch.equal(boxed.positions, plain.positions)
    with pytest.raises(ValueError, match="crop"):
        tiny_model.segmented_view(image, mask, crop="cell")


def test_view_config_checks_its_crop_settings():
    from seganswer_cli.model import ViewConfig

    assert ViewConfig.from_dict({"zoom": True}).crop == "cells"  # folders written before the setting
    with pytest.raises(ValueError, match="crop must be"):
        ViewConfig(crop="tight")
    with pytest.raises(ValueError, match="crop_margin"):
        ViewConfig(crop="box", crop_margin=-0.1)


def test_shapes_preset_second_look_magnifies_a_small_target():
    """The demo world's premise: a 24-px disc on a 640x480 scene is under one token of the global
    view and ~100 px across in the second look, where the cells around it would leave it ~25 px."""
    from dataclasses import asdict

    from seganswer_cli.model.mllm import build_tiny_processor
    from seganswer_cli.model.presets import SHAPES_MLLM, SHAPES_VIEW

    processor = build_tiny_processor(min_pixels=SHAPES_MLLM["min_pixels"], max_pixels=SHAPES_MLLM["max_pixels"])
    image_processor = processor.image_processor
    yy, xx = np.mgrid[:480, :640]
    disc = (yy - 200) ** 2 + (xx - 300) ** 2 < 12**2
    pixels = np.full((480, 640, 3), 128, np.uint8)
    pixels[disc] = (40, 70, 220)
    image = Image.fromarray(pixels)

    def disc_width(view):
        blue = np.asarray(view.segmented_image)[..., 2] > 180
        return np.flatnonzero(blue.any(axis=0)).size

    settings = asdict(SHAPES_VIEW)
    boxed = build_segmented_view(image, disc, image_processor, mode="bbox", **settings)
    cells = build_segmented_view(image, disc, image_processor, mode="bbox", **{**settings, "crop": "cells"})
    assert disc_width(boxed) >= 90 and disc_width(cells) <= 40
    sparse = build_segmented_view(image, disc, image_processor, mode="mask", **settings)
    assert sparse.num_tokens < boxed.num_tokens


def test_global_views_of_several_images_equal_one_at_a_time(tiny_model):
    """One processor call for a batch's images (sizes mixed) gives each image's own view, value for value."""
    rng = np.random.RandomState(3)
    images = [Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8)) for h, w in
              [(180, 240), (96, 300), (180, 240), (64, 64)]]
    together = tiny_model.global_views(images)
    for image, view in zip(images, together):
        alone = tiny_model.global_view(image)
        assert torch.equal(view.pixel_values, alone.pixel_values) and torch.equal(view.grid_thw, alone.grid_thw)
        assert view.native_size == (image.height, image.width) and view.num_tokens == alone.num_tokens
    assert tiny_model.global_views([]) == []
