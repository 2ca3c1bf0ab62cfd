"""Visual targets of BEiT-3's masked image modeling: BEiT v2's VQ-KD tokenizer loaded from a file in BEiT v2's
key layout (and a clear error naming the file when it does not fit), and the normalised-pixel fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pretrain.models.visual_tokenizer import PixelTarget, VQKDTokenizer

TINY = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, codebook_size=24, code_dim=8)


def _beitv2_state(depth: int = 2, dim: int = 16, patches: int = 16) -> dict[str, torch.Tensor]:
    """A VQ-KD state dict with BEiT v2's names (modeling_vqkd.VQKD), random values, decoder parts included."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    state = {
        'encoder.cls_token': rand(1, 1, dim),
        'encoder.pos_embed': rand(1, patches + 1, dim),
        'encoder.patch_embed.proj.weight': rand(dim, 3, 8, 8),
        'encoder.patch_embed.proj.bias': rand(dim),
        'encoder.fc_norm.weight': 1 + rand(dim),
        'encoder.fc_norm.bias': rand(dim),
        'encode_task_layer.0.weight': rand(dim, dim),
        'encode_task_layer.0.bias': rand(dim),
        'encode_task_layer.2.weight': rand(8, dim),
        'encode_task_layer.2.bias': rand(8),
        'quantize.embedding.weight': F.normalize(rand(24, 8), dim=-1),
        'quantize.embedding.cluster_size': torch.ones(24),
        'quantize.embedding.embed_avg': rand(24, 8),
        'quantize.embedding.initted': torch.ones(1),
        'quantize.cluster_size': torch.ones(24),
        'decoder.cls_token': rand(1, 1, dim),  # the decoder and its task layer are not needed to tokenize
        'decode_task_layer.0.weight': rand(dim, dim),
    }
    for i in range(depth):
        prefix = f'encoder.blocks.{i}.'
        state.update(
            {
                prefix + 'norm1.weight': 1 + rand(dim),
                prefix + 'norm1.bias': rand(dim),
                prefix + 'attn.qkv.weight': rand(3 * dim, dim),
                prefix + 'attn.q_bias': rand(dim),
                prefix + 'attn.v_bias': rand(dim),
                prefix + 'attn.proj.weight': rand(dim, dim),
                prefix + 'attn.proj.bias': rand(dim),
                prefix + 'norm2.weight': 1 + rand(dim),
                prefix + 'norm2.bias': rand(dim),
                prefix + 'mlp.fc1.weight': rand(4 * dim, dim),
                prefix + 'mlp.fc1.bias': rand(4 * dim),
                prefix + 'mlp.fc2.weight': rand(dim, 4 * dim),
                prefix + 'mlp.fc2.bias': rand(dim),
            }
        )
    return state


def test_loads_beitv2_layout_and_tokenizes(tmp_path: Path) -> None:
    state = _beitv2_state()
    path = tmp_path / 'vqkd.pth'
    torch.save({'model': state}, path)  # BEiT v2 releases wrap the weights in 'model'
    tokenizer = VQKDTokenizer(**TINY, mean=[127.5] * 3, std=[127.5] * 3, checkpoint=str(path))
    assert torch.equal(tokenizer.codebook, state['quantize.embedding.weight'])
    assert torch.equal(tokenizer.encoder.blocks[1].qkv.weight, state['encoder.blocks.1.attn.qkv.weight'])
    assert torch.equal(tokenizer.encoder.blocks[0].fc2.bias, state['encoder.blocks.0.mlp.fc2.bias'])
    assert torch.equal(tokenizer.task_layer[2].weight, state['encode_task_layer.2.weight'])
    assert not any(p.requires_grad for p in tokenizer.parameters())
    tokenizer.train()
    assert not tokenizer.training  # frozen: stays in eval mode
    images = torch.randn(2, 3, 32, 32)
    ids = tokenizer(images)
    assert ids.shape == (2, 16) and ids.dtype == torch.long and int(ids.max()) < 24
    # The id is the nearest (cosine) code of the l2-normalised task-layer feature; with mean = std = 127.5 the
    # [-1, 1] input of BEiT v2 is the normalised image itself.
    features = F.normalize(tokenizer.task_layer(tokenizer.encoder(images)), dim=-1)
    assert torch.equal(ids, (features @ state['quantize.embedding.weight'].t()).argmax(-1))


def test_loads_safetensors(tmp_path: Path) -> None:
    safetensors = pytest.importorskip('safetensors.torch')
    path = tmp_path / 'vqkd.safetensors'
    safetensors.save_file(_beitv2_state(), str(path))
    tokenizer = VQKDTokenizer(**TINY, checkpoint=str(path))
    assert tokenizer(torch.randn(1, 3, 32, 32)).shape == (1, 16)


def test_mismatched_file_names_the_file(tmp_path: Path) -> None:
    state = _beitv2_state()
    del state['encoder.blocks.1.attn.qkv.weight']
    path = tmp_path / 'broken_vqkd.pth'
    torch.save(state, path)
    with pytest.raises(ValueError, match=r'broken_vqkd\.pth.*encoder\.blocks\.1\.qkv\.weight'):
        VQKDTokenizer(**TINY, checkpoint=str(path))
    wrong_size = tmp_path / 'wide_vqkd.pth'
    torch.save(_beitv2_state(), wrong_size)
    with pytest.raises(ValueError, match=r'wide_vqkd\.pth.*shape'):
        VQKDTokenizer(**{**TINY, 'codebook_size': 32}, checkpoint=str(wrong_size))
    layer_scale = {**_beitv2_state(), 'encoder.blocks.0.gamma_1': torch.ones(16)}
    torch.save(layer_scale, tmp_path / 'gamma.pth')
    with pytest.raises(ValueError, match=r'gamma\.pth.*gamma_1'):
        VQKDTokenizer(**TINY, checkpoint=str(tmp_path / 'gamma.pth'))


def test_pixel_target_is_per_patch_normalised() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32) * 3 + 1
    target = PixelTarget(patch_size=8)(images)
    assert target.shape == (2, 16, 8 * 8 * 3)
    assert torch.allclose(target.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(target.std(-1), torch.ones(2, 16), atol=1e-3)
    # Patch (0, 1) of the first image holds the pixels of rows 0-7, columns 8-15.
    patch = images[0, :, :8, 8:16].permute(1, 2, 0).reshape(-1)
    assert torch.allclose(target[0, 1], (patch - patch.mean()) / (patch.var() + 1e-6).sqrt(), atol=1e-5)
