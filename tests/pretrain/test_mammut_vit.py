"""MaMMUTViT: shapes, cropped positional embeddings (RO-ViT CPE), feature maps, checkpointing."""

from __future__ import annotations

import pytest
import torch

from pretrain.models.vit import MaMMUTViT, sample_crop_boxes
from toolkit.registry import MODELS


def _vit(**kwargs) -> MaMMUTViT:
    cfg = dict(
        type='MaMMUTViT', img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, detection_grid=16
    )
    cfg.update(kwargs)
    torch.manual_seed(0)
    return MODELS.build(cfg)


def test_builds_and_shapes_and_grads():
    vit = _vit()
    images = torch.randn(2, 3, 32, 32)
    img_tokens = vit(images)
    assert img_tokens.shape == (2, 16, 32)
    img_tokens.square().mean().backward()
    missing = [name for name, p in vit.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert vit.pos_embed.grad.abs().sum() > 0


def test_cropped_pos_emb_train_random_eval_full():
    vit = _vit()
    vit.train()
    first = vit.get_pos_embed(vit.grid_size)
    second = vit.get_pos_embed(vit.grid_size)
    assert first.shape == (1, 16, 32)
    assert not torch.allclose(first, second), 'two training draws should crop differently'
    torch.manual_seed(3)
    again_a = vit.get_pos_embed(vit.grid_size)
    torch.manual_seed(3)
    again_b = vit.get_pos_embed(vit.grid_size)
    assert torch.equal(again_a, again_b), 'the crop follows torch RNG'
    vit.eval()
    assert torch.equal(vit.get_pos_embed(vit.grid_size), vit.pos_embed)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(vit(images), vit(images))
    vit.train()
    torch.manual_seed(1)
    out_a = vit(images)
    out_b = vit(images)
    assert not torch.allclose(out_a, out_b)


def test_cropped_pos_emb_switch_off_identical_train_eval():
    vit = _vit(cropped_pos_emb=False)
    images = torch.randn(2, 3, 32, 32)
    vit.train()
    out_train = vit(images)
    vit.eval()
    torch.testing.assert_close(out_train, vit(images))


def test_full_box_crop_recovers_embeddings():
    # Crop of the whole up-sampled grid, resized back to the pretraining grid, equals the up/down resampling.
    vit = _vit(detection_grid=None)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(vit.cropped_pos_embed(vit.grid_size, full), vit.pos_embed, atol=1e-6, rtol=0)
    # A crop of the left half reads only the left columns: the right half of the grid does not matter.
    half = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    base = vit.cropped_pos_embed(vit.grid_size, half)
    with torch.no_grad():
        grid = vit.pos_embed.view(1, 4, 4, 32)
        grid[:, :, 3] += 100.0
    assert torch.allclose(vit.cropped_pos_embed(vit.grid_size, half), base)


def test_sample_crop_boxes_ranges():
    torch.manual_seed(0)
    boxes = sample_crop_boxes(2000, scale=(0.1, 1.0), ratio=(0.5, 2.0))
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()
    area = width * height
    assert area.min() >= 0.1 - 1e-4 and area.max() <= 1.0 + 1e-5
    unclamped = (width < 1) & (height < 1)
    ratio = (width / height)[unclamped]
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 2.0 + 1e-4


def test_per_sample_crops_differ_across_batch():
    vit = _vit(crop_per_sample=True)
    vit.train()
    pos = vit.get_pos_embed(vit.grid_size, batch_size=3)
    assert pos.shape == (3, 16, 32)
    assert not torch.allclose(pos[0], pos[1])


def test_other_input_size_and_pos_interpolation():
    vit = _vit()
    vit.eval()
    assert vit.pos_embed_for_grid((8, 6)).shape == (1, 48, 32)
    assert vit(torch.randn(1, 3, 64, 48)).shape == (1, 48, 32)
    vit.train()
    assert vit(torch.randn(1, 3, 64, 48)).shape == (1, 48, 32)


def test_feature_maps_match_tokens():
    vit = _vit()
    vit.eval()
    images = torch.randn(2, 3, 32, 32)
    maps = vit.feature_maps(images, indices=(0, -1))
    assert [m.shape for m in maps] == [(2, 32, 4, 4)] * 2
    tokens = vit(images)
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), tokens)
    assert not torch.allclose(maps[0], maps[1])


def test_class_token_pooling_and_head():
    vit = _vit(class_token=True, pre_norm=True, final_pool='tok', output_dim=8)
    vit.eval()
    images = torch.randn(2, 3, 32, 32)
    assert vit(images).shape == (2, 16, 32)
    assert vit.forward_all_tokens(images).shape == (2, 17, 32)
    assert vit.forward_pooled(images).shape == (2, 8)
    with pytest.raises(ValueError, match='class_token'):
        _vit(final_pool='tok')


def test_grad_checkpointing_same_output_and_grads():
    vit = _vit(cropped_pos_emb=False)
    vit.train()
    images = torch.randn(2, 3, 32, 32)
    vit(images).sum().backward()
    grads = {n: p.grad.clone() for n, p in vit.named_parameters()}
    vit.zero_grad()
    vit.set_grad_checkpointing(True)
    vit(images).sum().backward()
    for name, p in vit.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-5, rtol=1e-4)


def test_conv_stem_keeps_token_grid_and_trains():
    torch.manual_seed(0)
    vit = MODELS.build(dict(type='MaMMUTViT', img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                            patch_stem='conv'))  # fmt: skip
    images = torch.randn(2, 3, 32, 32)
    tokens = vit(images)
    assert tokens.shape == (2, 16, 32)
    tokens.sum().backward()
    stem = vit.patch_embed.layers
    assert len([m for m in stem if isinstance(m, torch.nn.Conv2d)]) == 4  # 3 stride-2 stages + 1x1
    assert all(p.grad is not None for p in vit.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match='power-of-two'):
        MaMMUTViT(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2, patch_stem='conv')
