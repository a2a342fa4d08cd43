"""SAM 2.1 in batches: one encoder call for a stack of images and one decoder call for several images
give what each image gets alone; the cached FPN positional encodings equal SAM's own."""

import numpy as np
import pytest
import torch
from PIL import Image

from seganswer_cli.model.mask_decoder import ImageEmbeddings, binary_masks, upsample_logits


def _images(n: int) -> list[Image.Image]:
    rng = np.random.RandomState(0)
    sizes = [(180, 240), (96, 96), (180, 240), (120, 200)]
    return [Image.fromarray((rng.rand(*sizes[i % 4], 3) * 255).astype(np.uint8)) for i in range(n)]


@torch.no_grad()
def test_batched_embeddings_equal_per_image_ones(tiny_model):
    images = _images(4)
    together = tiny_model.encode_for_masks(images)
    assert len(together) == 4
    for i, image in enumerate(images):
        alone = tiny_model.encode_for_masks([image])
        torch.testing.assert_close(together.select(i).embeddings, alone.embeddings, atol=1e-5, rtol=1e-4)
        for a, b in zip(together.select(i).high_res, alone.high_res):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_batched_decoding_equals_per_image_decoding(tiny_model):
    images = _images(4)
    embeddings = tiny_model.encode_for_masks(images)
    torch.manual_seed(0)
    states = [torch.randn(1, 64), torch.randn(2, 64), torch.randn(1, 64), torch.randn(1, 64)]  # one image asks twice
    together = tiny_model.decode_masks(embeddings, states)
    for i, (pred, state) in enumerate(zip(together, states)):
        alone = tiny_model.mask_decoder.decode(embeddings.select(i), tiny_model.projector(state))
        assert pred.low_res_logits.shape == alone.low_res_logits.shape
        torch.testing.assert_close(pred.low_res_logits, alone.low_res_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(pred.iou, alone.iou, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pred.object_logits, alone.object_logits, atol=1e-5, rtol=1e-4)
    # the masks of one image size are upsampled together, to exactly what each gets alone
    low = [pred.low_res_logits[0] for pred in together]
    sizes = [(image.height, image.width) for image in images]
    for mask, logits, size in zip(binary_masks(low, sizes), low, sizes):
        assert np.array_equal(mask, (upsample_logits(logits[None], size)[0] > 0).numpy())


@torch.no_grad()
def test_cached_positional_encodings_equal_sams_own(tiny_model):
    cached = tiny_model.mask_decoder.sam.vision_encoder.neck.position_encoding
    for shape in [(1, 256, 32, 32), (3, 256, 16, 16), (2, 256, 32, 32)]:
        torch.testing.assert_close(cached(torch.Size(shape), "cpu", torch.float32),
                                   cached.inner(torch.Size(shape), "cpu", torch.float32), atol=0, rtol=0)


def test_embeddings_of_an_earlier_pass_need_a_frozen_encoder(tiny_model):
    """Embeddings computed without gradient are reused while nothing on SAM's encoder path trains (the
    Hiera encoder is always frozen; ``conv_s0``/``conv_s1`` train in Stage 1), refused otherwise."""
    images = _images(2)
    with torch.no_grad():
        first = tiny_model.encode_for_masks(images[:1])
    convs = [tiny_model.mask_decoder.sam.mask_decoder.conv_s0, tiny_model.mask_decoder.sam.mask_decoder.conv_s1]
    assert not tiny_model.mask_decoder.encoder_frozen  # a fresh model's convs train
    with pytest.raises(ValueError, match="cannot be reused"):
        tiny_model.embeddings_for_masks(images, [first, None])
    try:
        for conv in convs:
            conv.requires_grad_(False)
        assert tiny_model.mask_decoder.encoder_frozen
        both = tiny_model.embeddings_for_masks(images, [first, None])
    finally:
        for conv in convs:
            conv.requires_grad_(True)
    assert isinstance(both, ImageEmbeddings) and len(both) == 2
    torch.testing.assert_close(both.select(0).embeddings, first.embeddings, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(both.select(1).embeddings, tiny_model.encode_for_masks(images[1:]).embeddings)
