import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from frozenvl.flame.loss import MultiPositiveInfoNCELoss, MultiPositiveSigmoidLoss


def _log1pexp(x):
    return math.log1p(math.exp(x))


def test_sigmoid_loss_init_and_hand_computed_single_positive():
    loss = MultiPositiveSigmoidLoss()
    assert loss.logit_scale.item() == pytest.approx(math.log(10)) and loss.logit_bias.item() == -10
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (N=2, S=1, D=2)
    # Positives: 10 * 1 - 10 = 0 -> -log sigmoid(0) = log 2; negatives: -(10 * 0 - 10) = 10 -> log(1 + e^-10).
    expected = (2 * math.log(2) + 2 * _log1pexp(-10)) / 2
    assert loss(images, texts)["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_loss_multi_positive_hand_computed():
    loss = MultiPositiveSigmoidLoss(init_logit_scale=0.0, init_logit_bias=0.0)  # logits = cosine
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[[1.0, 0.0], [0.6, 0.8]],
                          [[0.0, 1.0], [0.0, 1.0]]])  # (N=2, S=2, D=2)
    # Row of image 0: its positives have logits 1.0 and 0.6; the negatives (image 1's facets) 0 and 0.
    row0 = _log1pexp(-1.0) + _log1pexp(-0.6) + 2 * _log1pexp(0.0)
    # Row of image 1: positives 1 and 1; negatives are image 0's facets with logits 0 and 0.8.
    row1 = 2 * _log1pexp(-1.0) + _log1pexp(0.0) + _log1pexp(0.8)
    assert loss(images, texts)["loss"].item() == pytest.approx((row0 + row1) / 4, rel=1e-6)
    # Swapping which image owns which facets changes the loss (labels follow rows, not positions).
    assert loss(images, texts.flip(0))["loss"].item() != pytest.approx((row0 + row1) / 4, rel=1e-3)


def test_infonce_hand_computed():
    loss = MultiPositiveInfoNCELoss(init_logit_scale=0.0)
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    # Slot 0: identity similarities -> every CE = log(1 + e^-1).
    slot0 = _log1pexp(-1.0)
    # Slot 1: texts (0,1) and (0,1). i2t: image 0 logits [0, 0] -> log 2; image 1 logits [1, 1] -> log 2.
    # t2i: text 0 = (0,1) vs images -> logits [0, 1], target 0 -> log(1 + e); text 1 -> [0, 1], target 1.
    slot1 = (math.log(2) + (_log1pexp(1.0) + _log1pexp(-1.0)) / 2) / 2
    assert loss(images, texts)["loss"].item() == pytest.approx((slot0 + slot1) / 2, rel=1e-6)


def _make_loss(kind):
    return MultiPositiveSigmoidLoss(init_logit_bias=0.0) if kind == "sigmoid" else MultiPositiveInfoNCELoss()


def _worker(rank, world, init_file, images, texts, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = images.shape[0] // world
        for kind in ("sigmoid", "infonce"):
            local = images[rank * n:(rank + 1) * n].clone().requires_grad_(True)
            out = _make_loss(kind)(local, texts[rank * n:(rank + 1) * n])["loss"]
            out.backward()
            results[(kind, rank)] = (out.item(), local.grad.clone())
        dist.barrier()  # neither rank tears down while the other may still be in a collective
    finally:
        dist.destroy_process_group()
    # The results are in the manager. Leave without interpreter finalization: a gloo worker thread still alive
    # at C++ static destruction aborts the process ("terminate called without an active exception", SIGABRT; once
    # in CI, 1 of ~10 runs of the suite), a teardown race of torch's, not of the loss under test.
    os._exit(0)


def test_all_ranks_texts_are_negatives(tmp_path):
    torch.manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1)
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), images, texts, results), nprocs=2)
    for kind in ("sigmoid", "infonce"):
        full_images = images.clone().requires_grad_(True)
        full = _make_loss(kind)(full_images, texts)["loss"]
        full.backward()
        (loss0, grad0), (loss1, grad1) = results[(kind, 0)], results[(kind, 1)]
        # The mean of the rank losses is the loss of the global batch: every rank saw all texts as negatives.
        assert (loss0 + loss1) / 2 == pytest.approx(full.item(), rel=1e-5)
        if kind == "sigmoid":
            assert torch.allclose(torch.cat([grad0, grad1]) / 2, full_images.grad, atol=1e-6)
        # A rank alone (without the other rank's negatives) gives a different loss.
        alone = _make_loss(kind)(images[:2], texts[:2])["loss"].item()
        assert alone != pytest.approx(loss0, rel=1e-3)
