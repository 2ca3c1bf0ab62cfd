"""Tube geometry (counts, centres, receptive fields), kernel inflation, the gate and the ablation switches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.models.tube_tokenizer import SparseTubeTokenizer, TubeSpec, sincos_3d, tube_centres, tube_grid
from pretrain.models.vit import MaMMUTViT


def _vit(img_size: int = 32, patch: int = 8, dim: int = 48) -> MaMMUTViT:
    torch.manual_seed(0)
    return MaMMUTViT(img_size=img_size, patch_size=patch, embed_dim=dim, depth=2, num_heads=2).eval()


def test_default_tubes_token_counts_for_32x224x224() -> None:
    tok = SparseTubeTokenizer(embed_dim=96, patch_size=16)
    counts = tok.token_counts((32, 224, 224))
    # (32-8)//16+1=2 x 7 x 7; (28-16)//6+1=3 x 7 x 7; (32-4)//16+1=2 x 7 x 7; 2 frames x 14 x 14
    assert counts == {'tube0': 98, 'tube1': 147, 'tube2': 98, 'frames': 392, 'total': 735}
    paper = SparseTubeTokenizer(embed_dim=96, patch_size=16, frame_stride=32).token_counts((32, 224, 224))
    assert paper['total'] == 539  # TubeViT's 1x16x16 patch at temporal stride 32
    dense = (32 // 2) * (224 // 16) ** 2  # 2x16x16 patches
    assert dense == 3136 and counts['total'] < dense / 4


def test_tube_centres_follow_offsets_strides_and_kernels() -> None:
    spec = TubeSpec(kernel=(2, 4, 4), stride=(2, 4, 4), offset=(1, 0, 4))
    assert tube_grid(spec, (5, 8, 12)) == (2, 2, 2)
    centres = tube_centres(spec, (5, 8, 12))
    expected = [(t, y, x) for t in (2.0, 4.0) for y in (2.0, 6.0) for x in (6.0, 10.0)]
    assert centres.tolist() == [list(c) for c in expected]
    with pytest.raises(ValueError, match='does not fit'):
        tube_grid(TubeSpec(kernel=(8, 4, 4), stride=(1, 4, 4)), (4, 8, 8))


def test_every_token_is_the_kernel_over_the_region_centred_at_its_centre() -> None:
    torch.manual_seed(0)
    vit = _vit()
    tubes = [dict(kernel=(3, 6, 5), stride=(2, 7, 9), offset=(1, 2, 3))]
    tok = SparseTubeTokenizer(embed_dim=48, patch_size=8, tubes=tubes, use_frames=False, use_fixed_pos=False)
    clips = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        tokens = tok(clips, vit)[0]
        pos = vit.sample_pos_embed(torch.tensor([[0.5, 0.5]]))  # only used to check it is added below
    centres = tok.centres((8, 32, 32))
    assert tokens.shape[0] == centres.shape[0] == tok.token_counts((8, 32, 32))['total']
    conv = tok.tubes[0]
    for index in (0, 5, centres.shape[0] - 1):
        t, y, x = centres[index].tolist()
        t0, y0, x0 = int(t - 1.5), int(y - 3), int(x - 2.5)  # centre - kernel / 2
        region = clips[:, :, t0 : t0 + 3, y0 : y0 + 6, x0 : x0 + 5]
        expected = F.conv3d(region, conv.weight, conv.bias).reshape(-1)
        learned = vit.sample_pos_embed(torch.tensor([[x / 32, y / 32]]))[0]
        torch.testing.assert_close(tokens[index], expected + learned, rtol=1e-4, atol=1e-5)
    assert pos.shape == (1, 48)


def test_frame_patches_with_closed_gate_encode_like_the_image() -> None:
    vit = _vit()
    tok = SparseTubeTokenizer(embed_dim=48, patch_size=8, tubes=[], frame_stride=4)
    image = torch.randn(2, 3, 32, 32)
    clips = image[:, :, None].expand(-1, -1, 4, -1, -1).contiguous()  # a static 4-frame clip
    with torch.no_grad():
        video_out = vit.forward_embedded(tok(clips, vit))
        image_out = vit(image)
    torch.testing.assert_close(video_out, image_out, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        tok.pos_gate.fill_(0.5)
        assert not torch.allclose(vit.forward_embedded(tok(clips, vit)), image_out, atol=1e-3)


def test_inflated_tubes_reproduce_the_patch_embedding_on_static_clips() -> None:
    vit = _vit()
    tubes = [dict(kernel=(4, 8, 8), stride=(4, 8, 8)), dict(kernel=(2, 16, 16), stride=(2, 16, 16))]
    tok = SparseTubeTokenizer(embed_dim=48, patch_size=8, tubes=tubes, use_frames=False, use_fixed_pos=False)
    tok.inflate_patch_kernel(vit.patch_embed.weight, vit.patch_embed.bias)
    image = torch.randn(1, 3, 32, 32)
    clips = image[:, :, None].expand(-1, -1, 4, -1, -1)
    with torch.no_grad():
        out = tok(clips, vit) - vit.sample_pos_embed(tok.centres((4, 32, 32))[:, [2, 1]] / 32)
        patches = vit.patch_embed(image).flatten(2).transpose(1, 2)[0]  # (16, D)
    torch.testing.assert_close(out[0, :16], patches, rtol=1e-4, atol=1e-5)  # same size: exact
    # A resized kernel keeps the response to a constant colour.
    flat = torch.full((1, 3, 4, 32, 32), 0.7)
    with torch.no_grad():
        big = tok.tubes[1](flat[:, :, :2, :16, :16]).reshape(-1)
        small = vit.patch_embed(flat[:, :, 0, :8, :8]).reshape(-1)
    torch.testing.assert_close(big, small, rtol=1e-3, atol=1e-4)


def test_gate_starts_closed_and_receives_gradient() -> None:
    vit = _vit()
    tok = SparseTubeTokenizer(embed_dim=48, patch_size=8, tubes=[dict(kernel=4, stride=4)], frame_stride=2)
    clips = torch.randn(2, 3, 4, 32, 32)
    off = SparseTubeTokenizer(
        embed_dim=48, patch_size=8, tubes=[dict(kernel=4, stride=4)], frame_stride=2, use_fixed_pos=False
    )
    off.load_state_dict(tok.state_dict(), strict=False)
    torch.testing.assert_close(tok(clips, vit), off(clips, vit))  # gate 0: fixed embeddings have no effect
    tok(clips, vit).square().sum().backward()
    assert tok.pos_gate.grad is not None and tok.pos_gate.grad.abs().sum() > 0
    assert off.pos_gate is None


def test_ungated_fixed_embeddings_are_added_with_weight_one() -> None:
    vit = _vit()
    kwargs = dict(embed_dim=48, patch_size=8, tubes=[dict(kernel=4, stride=4)], frame_stride=2)
    plain = SparseTubeTokenizer(**kwargs, use_fixed_pos=False)
    ungated = SparseTubeTokenizer(**kwargs, use_gate=False)
    ungated.load_state_dict(plain.state_dict())
    clips = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        diff = ungated(clips, vit) - plain(clips, vit)
    torch.testing.assert_close(diff[0], sincos_3d(ungated.centres((4, 32, 32)), 48), rtol=1e-5, atol=1e-5)


def test_frames_only_ablation_cannot_tell_time_order_but_tubes_can() -> None:
    vit = _vit()
    clips = torch.randn(1, 3, 8, 32, 32)
    reverse = clips.flip(2)
    frames_only = SparseTubeTokenizer(
        embed_dim=48, patch_size=8, use_tubes=False, use_fixed_pos=False, frame_stride=7
    )  # frames 0 and 7: reversing the clip swaps them
    with torch.no_grad():
        fwd = vit.forward_embedded(frames_only(clips, vit)).mean(1)
        bwd = vit.forward_embedded(frames_only(reverse, vit)).mean(1)
    torch.testing.assert_close(fwd, bwd, rtol=1e-5, atol=1e-5)
    tubes = SparseTubeTokenizer(embed_dim=48, patch_size=8, tubes=[dict(kernel=(4, 8, 8), stride=(4, 8, 8))])
    with torch.no_grad():
        tubes.pos_gate.fill_(1.0)
        fwd = vit.forward_embedded(tubes(clips, vit)).mean(1)
        bwd = vit.forward_embedded(tubes(reverse, vit)).mean(1)
    assert not torch.allclose(fwd, bwd, atol=1e-3)


def test_sincos_3d_values_and_padding() -> None:
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]])
    emb = sincos_3d(centres, 50)  # 8 frequencies per axis: 48 channels, 2 zero channels
    assert emb.shape == (3, 50)
    assert torch.all(emb[:, 48:] == 0) and emb.abs().max() <= 1.0
    assert torch.equal(emb[0, :48], torch.tensor(([0.0] * 8 + [1.0] * 8) * 3))
    assert not torch.allclose(emb[1], emb[2])
    with pytest.raises(ValueError, match='dim >= 6'):
        sincos_3d(centres, 4)


def test_switch_validation() -> None:
    with pytest.raises(ValueError, match='at least one'):
        SparseTubeTokenizer(embed_dim=48, patch_size=8, use_tubes=False, use_frames=False)
    with pytest.raises(ValueError, match='unknown tube keys'):
        SparseTubeTokenizer(embed_dim=48, patch_size=8, tubes=[dict(kernel=4, stride=4, pad=1)])
    tok = SparseTubeTokenizer(embed_dim=48, patch_size=8, use_tubes=False, frame_stride=3)
    assert tok.token_counts((8, 32, 32)) == {'frames': 3 * 16, 'total': 48}
    assert len(tok.tubes) == 0
