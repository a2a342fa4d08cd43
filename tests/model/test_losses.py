"""SAM 2's mask losses against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from seganswer_cli.model.losses import (
    LossWeights,
    dice_loss,
    iou_l1_loss,
    mask_iou,
    mask_losses,
    object_score_loss,
    sigmoid_focal_loss,
    total_loss,
)


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_focal_loss_by_hand():
    logits = torch.tensor([[[2.0, -1.0]]])  # (1, 1, 2)
    target = torch.tensor([[[1.0, 0.0]]])
    p0, p1 = _sig(2.0), _sig(-1.0)
    # pixel 0: positive, p_t = p0, alpha_t = 0.25; pixel 1: negative, p_t = 1 - p1, alpha_t = 0.75
    l0 = 0.25 * -math.log(p0) * (1 - p0) ** 2
    l1 = 0.75 * -math.log(1 - p1) * p1**2
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_dice_loss_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # p = 0.5 everywhere
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # 1 - (2 * 1.0 + 1) / (2.0 + 2 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(1 - 3 / 5)


def test_iou_and_iou_l1_by_hand():
    logits = torch.tensor([[[1.0, 1.0, -1.0, -1.0]], [[-1.0, -1.0, -1.0, -1.0]]])
    target = torch.tensor([[[1.0, 0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])
    iou = mask_iou(logits, target)
    assert iou.tolist() == pytest.approx([1 / 3, 0.0])  # empty vs empty counts 0, as in SAM 2
    pred_iou = torch.tensor([0.5, 0.2], requires_grad=True)
    loss = iou_l1_loss(logits, target, pred_iou)
    assert loss.tolist() == pytest.approx([0.5 - 1 / 3, 0.2])
    loss.sum().backward()
    assert pred_iou.grad.tolist() == [1.0, 1.0]


def test_object_score_is_bce_against_presence():
    logits = torch.tensor([0.3, -2.0])
    target = torch.zeros(2, 2, 2)
    target[0, 0, 0] = 1
    expected = [-math.log(_sig(0.3)), -math.log(1 - _sig(-2.0))]
    assert object_score_loss(logits, target).tolist() == pytest.approx(expected, rel=1e-6)


def test_mask_losses_zero_mask_terms_of_empty_targets_and_average_over_objects():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 4)
    target = torch.zeros(2, 4, 4)
    target[0, :2, :2] = 1  # object 1's target is empty
    iou_pred = torch.tensor([0.4, 0.9])
    obj = torch.tensor([1.0, -1.0])
    parts = mask_losses(logits, target, iou_pred, obj)
    assert parts["focal"].item() == pytest.approx(sigmoid_focal_loss(logits[:1], target[:1]).item() / 2, rel=1e-6)
    assert parts["dice"].item() == pytest.approx(dice_loss(logits[:1], target[:1]).item() / 2, rel=1e-6)
    assert parts["iou"].item() == pytest.approx(iou_l1_loss(logits[:1], target[:1], iou_pred[:1]).item() / 2, rel=1e-6)
    assert parts["object_score"].item() == pytest.approx(object_score_loss(obj, target).sum().item() / 2, rel=1e-6)


def test_total_uses_sam21_weights_by_default():
    parts = {"focal": torch.tensor(1.0), "dice": torch.tensor(2.0), "iou": torch.tensor(3.0), "object_score": torch.tensor(4.0)}
    assert total_loss(torch.tensor(0.5), parts, LossWeights()).item() == pytest.approx(0.5 + 20 + 2 + 3 + 4)
    w = LossWeights(lm=0.0, focal=1.0, dice=0.0, iou=0.0, object_score=0.0)
    assert total_loss(torch.tensor(0.5), parts, w).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        LossWeights(dice=-1)


def test_matches_meta_sam2_training_losses():
    """Against SAM 2's own ``MultiStepMultiMasksAndIous`` (SAM 2.1's loss settings), where it is
    importable: ``pip install --no-deps --no-build-isolation sam2==1.1.0`` and its training deps
    (hydra-core, iopath, tensordict, ...). Skipped otherwise (it is not a project dependency)."""
    loss_fns = pytest.importorskip("training.loss_fns", reason="Meta's SAM 2 training code is not installed")
    torch.manual_seed(1)
    n, h, w = 3, 16, 16
    logits = torch.randn(n, h, w) * 3
    targets = (torch.rand(n, h, w) > 0.6).float()
    targets[2] = 0  # an object absent from its frame
    pred_iou = torch.rand(n)
    obj = torch.randn(n)
    meta = loss_fns.MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        focal_alpha=0.25, focal_gamma=2, supervise_all_iou=True, iou_use_l1_loss=True, pred_obj_scores=True,
        focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0,
    )
    outs = [{"multistep_pred_multimasks_high_res": [logits[:, None]], "multistep_pred_ious": [pred_iou[:, None]],
             "multistep_object_score_logits": [obj[:, None]]}]
    ref = meta(outs, targets[None])
    ours = mask_losses(logits, targets, pred_iou, obj)
    for our_name, meta_name in [("focal", "loss_mask"), ("dice", "loss_dice"), ("iou", "loss_iou"), ("object_score", "loss_class")]:
        assert ours[our_name].item() == pytest.approx(float(ref[meta_name]), rel=1e-5), our_name
    assert total_loss(None, ours, LossWeights()).item() == pytest.approx(float(ref["core_loss"]), rel=1e-5)
