"""FIBERBackbone: zero gates reproduce mmdet's Swin and HF RoBERTa, fusion really fuses (and only where it
should), converters reproduce timm / transformers models, the official FIBER key map covers every
parameter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from mmdet.models.backbones import SwinTransformer
from torch import Tensor, nn
from transformers import RobertaConfig, RobertaForMaskedLM, RobertaModel

from pretrain.models.fiber_backbone import FIBER_PRESETS, FIBERBackbone
from pretrain.models.fiber_converters import (
    convert_fiber_checkpoint,
    convert_hf_roberta,
    convert_timm_swin,
)
from toolkit.checkpoint import load_converted
from toolkit.registry import MODELS

# Four stages, the last K=4 blocks straddle stages 3 and 4 (2 + 2); six text layers, the last four fused.
TINY_IMAGE = dict(
    embed_dims=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4), window_size=2, drop_path_rate=0.0
)
TINY_TEXT = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=6,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=24,
    type_vocab_size=1,
    pad_token_id=1,
    layer_norm_eps=1e-5,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
K = 4


def _jitter(module: nn.Module, seed: int = 0) -> None:
    """Perturb every parameter (norms, biases and position tables too) so parity checks can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.endswith('alpha'):
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


def _set_gates(model: FIBERBackbone, value: float) -> None:
    with torch.no_grad():
        for cross_attn in [*model.image_cross_attn, *model.text_cross_attn]:
            cross_attn.alpha.fill_(value)


def _tiny(**kwargs: object) -> FIBERBackbone:
    torch.manual_seed(0)
    model = FIBERBackbone(image=TINY_IMAGE, text=TINY_TEXT, fusion_layers=K, **kwargs)
    model.init_weights()
    _jitter(model)
    return model.eval()


def _inputs(batch: int = 2, length: int = 7) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 64, 64, generator=gen)
    ids = torch.randint(3, 64, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 4:] = 0
    ids[1, 4:] = 1  # RoBERTa's pad id
    return images, ids, mask


def _max_diff(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> list[float]:
    return [(x - y).abs().max().item() for x, y in zip(a, b, strict=True)]


def test_builds_from_registry_and_checks_arguments() -> None:
    model = MODELS.build(dict(type='FIBERBackbone', image=TINY_IMAGE, text=TINY_TEXT, fusion_layers=K))
    assert isinstance(model, FIBERBackbone)
    assert model.fused_image_blocks == [(2, 2), (2, 3), (3, 0), (3, 1)]
    assert model.fused_text_layers == [2, 3, 4, 5]
    assert [m.context_dim for m in model.text_cross_attn] == [64, 64, 128, 128]
    with pytest.raises(ValueError, match='fusion_layers=7'):
        FIBERBackbone(image=TINY_IMAGE, text=TINY_TEXT, fusion_layers=7)
    with pytest.raises(ValueError, match='with_cp on FIBERBackbone'):
        FIBERBackbone(image={**TINY_IMAGE, 'with_cp': True}, text=TINY_TEXT)
    with pytest.raises(FileNotFoundError, match='nothing is downloaded'):
        FIBERBackbone(image=TINY_IMAGE, text=dict(pretrained='/nonexistent/roberta'))


def test_zero_gates_reproduce_mmdet_swin_and_hf_roberta() -> None:
    model = _tiny()
    swin = SwinTransformer(**TINY_IMAGE)
    swin.load_state_dict(model.image.state_dict())
    swin.eval()
    roberta = RobertaModel(RobertaConfig(**TINY_TEXT), add_pooling_layer=False).eval()
    roberta.load_state_dict(model.text.state_dict())
    images, ids, mask = _inputs()
    with torch.no_grad():
        out = model(images, ids, mask)  # fusion on, every alpha 0
        ref_feats = tuple(swin(images))
        ref_text = roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = model.encode_image(images)
    assert max(_max_diff(out.image_feats, ref_feats)) < 1e-4
    assert (out.text_hidden - ref_text).abs().max().item() < 1e-4
    assert (model.encode_text(ids, mask) - ref_text).abs().max().item() < 1e-4
    assert max(_max_diff(alone.image_feats, ref_feats)) < 1e-4
    assert out.image_tokens.shape == (2, 4, 128) and out.image_hw == (2, 2)
    assert out.text_mask.dtype == torch.bool and out.text_mask.sum().item() == 11


def test_open_gates_fuse_and_switches_cut_fusion() -> None:
    model = _tiny()
    images, ids, mask = _inputs()
    ids_b = ids.clone()
    ids_b[:, 1] = 5
    images_b = images + 0.5 * torch.randn_like(images)
    with torch.no_grad():
        closed = model(images, ids, mask)
        _set_gates(model, 0.5)
        base = model(images, ids, mask)
        new_text = model(images, ids_b, mask)
        new_image = model(images_b, ids, mask)
        off, off_text = model(images, ids, mask, fusion=False), model(images, ids_b, mask, fusion=False)
        caption = model(images, ids, mask, image_to_text=False)
        caption_text = model(images, ids_b, mask, image_to_text=False)
        caption_image = model(images_b, ids, mask, image_to_text=False)
    image_change = _max_diff(base.image_feats, new_text.image_feats)
    assert image_change[:2] == [0.0, 0.0]  # stages before the first fused block see no text
    assert min(image_change[2:]) > 1e-3  # the fused stages do
    assert (base.text_hidden - new_image.text_hidden).abs().max().item() > 1e-3
    # Fusion off: the same weights as a dual encoder, equal to the uni-modal backbones (the closed gates).
    assert max(_max_diff(off.image_feats, off_text.image_feats)) == 0.0
    assert max(_max_diff(off.image_feats, closed.image_feats)) < 1e-6
    assert (off.text_hidden - closed.text_hidden).abs().max().item() < 1e-6
    # Text attends to the image only (captioning): the image ignores the text, the text reads the image.
    assert max(_max_diff(caption.image_feats, caption_text.image_feats)) == 0.0
    assert (caption.text_hidden - caption_image.text_hidden).abs().max().item() > 1e-3
    default_off = _tiny(fusion=False)
    _set_gates(default_off, 0.5)
    with torch.no_grad():
        assert max(_max_diff(default_off(images, ids, mask).image_feats, off.image_feats)) < 1e-6


def test_text_padding_is_masked_and_causal_text_hides_the_future() -> None:
    model = _tiny()
    _set_gates(model, 0.5)
    images, ids, mask = _inputs()
    ids_pad = ids.clone()
    ids_pad[1, 5] = 9  # a padded position of sample 1
    ids_late = ids.clone()
    ids_late[:, -1] = 9
    with torch.no_grad():
        base, pad = model(images, ids, mask), model(images, ids_pad, mask)
        causal = model(images, ids, mask, causal_text=True, image_to_text=False)
        causal_late = model(images, ids_late, mask, causal_text=True, image_to_text=False)
    assert max(_max_diff(base.image_feats, pad.image_feats)) < 1e-6
    assert (base.text_hidden[1, :4] - pad.text_hidden[1, :4]).abs().max().item() < 1e-6
    assert (causal.text_hidden[0, :-1] - causal_late.text_hidden[0, :-1]).abs().max().item() < 1e-6
    assert (causal.text_hidden[0, -1] - causal_late.text_hidden[0, -1]).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match='image_to_text=False'):  # the image would leak later tokens
        model(images, ids, mask, causal_text=True)


def test_paired_steps_read_the_states_entering_them() -> None:
    model = _tiny()
    _set_gates(model, 0.5)
    entering_image: list[Tensor] = []
    entering_text: list[Tensor] = []
    context_of_image: list[Tensor] = []
    context_of_text: list[Tensor] = []
    hooks = []
    for (s, j), index in zip(model.fused_image_blocks, model.fused_text_layers, strict=True):
        block = model.image.stages[s].blocks[j]
        query = model.text.encoder.layer[index].attention.self.query
        hooks.append(block.norm1.register_forward_pre_hook(lambda m, a: entering_image.append(a[0])))
        hooks.append(query.register_forward_pre_hook(lambda m, a: entering_text.append(a[0])))
    for cross_attn in model.image_cross_attn:
        hooks.append(cross_attn.register_forward_pre_hook(lambda m, a: context_of_image.append(a[1])))
    for cross_attn in model.text_cross_attn:
        hooks.append(cross_attn.register_forward_pre_hook(lambda m, a: context_of_text.append(a[1])))
    images, ids, mask = _inputs()
    with torch.no_grad():
        model(images, ids, mask)
    for hook in hooks:
        hook.remove()
    assert len(context_of_image) == len(context_of_text) == K
    for k in range(K):
        assert torch.equal(context_of_image[k], entering_text[k])
        assert torch.equal(context_of_text[k], entering_image[k])
    assert entering_image[2].shape[-1] == 128  # the first stage-4 block: tokens after patch merging


def test_gradients_reach_gates_and_checkpointing_matches() -> None:
    images, ids, mask = _inputs()
    grads = []
    for with_cp in (False, True):
        model = _tiny(with_cp=with_cp).train()
        out = model(images, ids, mask)
        loss = sum(f.square().mean() for f in out.image_feats) + out.text_hidden.square().mean()
        loss.backward()
        for name, param in model.named_parameters():
            assert param.grad is not None, name
        for cross_attn in [*model.image_cross_attn, *model.text_cross_attn]:
            assert cross_attn.alpha.grad.abs().item() > 0
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_on_cpu() -> None:
    model = _tiny()
    _set_gates(model, 0.5)
    images, ids, mask = _inputs()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(images, ids, mask)
    assert all(torch.isfinite(f).all() for f in out.image_feats)
    assert torch.isfinite(out.text_hidden).all()


def test_timm_swin_converts_to_the_same_stage_outputs() -> None:
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    depths, heads = (2, 2, 2, 2), (1, 2, 2, 4)
    torch.manual_seed(0)
    # always_partition: timm would otherwise shrink the window (and drop the shift) on the 2x2 last stage.
    timm_swin = TimmSwin(
        img_size=64,
        embed_dim=16,
        depths=depths,
        num_heads=heads,
        window_size=2,
        num_classes=0,
        always_partition=True,
    )
    _jitter(timm_swin)
    timm_swin.eval()
    tensors, unused = convert_timm_swin(timm_swin.state_dict())
    assert unused == {}
    image = dict(embed_dims=16, depths=depths, num_heads=heads, window_size=2, drop_path_rate=0.0)
    model = FIBERBackbone(image=image, text=TINY_TEXT, fusion_layers=2).eval()
    missing = load_converted(model, tensors)
    assert not [
        k
        for k in missing
        if k.startswith('image.')
        and 'relative_position_index' not in k
        and not k.startswith(('image.norm0', 'image.norm1', 'image.norm2'))
    ]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.encode_image(images).image_feats
        _, stages = timm_swin.forward_intermediates(images, norm=True)  # final norm on the last stage only
    for i in range(3):  # our out-norms 0-2 have no timm counterpart: apply them to timm's stage outputs
        norm = getattr(model.image, f'norm{i}')
        stages[i] = rearrange(norm(rearrange(stages[i], 'b c h w -> b h w c')), 'b h w c -> b c h w')
    assert max(_max_diff(ours, tuple(stages))) < 1e-4


def test_hf_roberta_converts_and_local_folder_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mlm = RobertaForMaskedLM(RobertaConfig(**TINY_TEXT)).eval()
    tensors, unused = convert_hf_roberta(mlm.state_dict())
    assert unused and all(key.startswith('lm_head.') for key in unused)
    model = FIBERBackbone(image=TINY_IMAGE, text=TINY_TEXT, fusion_layers=K).eval()
    assert not [k for k in load_converted(model, tensors) if k.startswith('text.')]
    _, ids, mask = _inputs()
    with torch.no_grad():
        ref = mlm.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (model.encode_text(ids, mask) - ref).abs().max().item() < 1e-4

    RobertaModel(RobertaConfig(**TINY_TEXT)).save_pretrained(tmp_path)
    saved = RobertaModel.from_pretrained(tmp_path, local_files_only=True).eval()
    loaded = FIBERBackbone(image=TINY_IMAGE, text=dict(pretrained=str(tmp_path)), fusion_layers=K).eval()
    with torch.no_grad():
        ref = saved(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (loaded.encode_text(ids, mask) - ref).abs().max().item() < 1e-4


def _official_fiber_state_dict(model: FIBERBackbone, flavour: str) -> dict[str, Tensor]:
    """A synthetic checkpoint with microsoft/FIBER's module names (fine: GeneralizedVLRCNN under DDP;
    coarse: FIBERTransformerSS), shaped for ``model``'s architecture."""
    gen = torch.Generator().manual_seed(2)
    rnd = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    fine = flavour == 'fine'
    img = 'module.fusion_backbone.backbone.body.' if fine else 'vit_model.'
    txt = 'module.fusion_backbone.language_backbone.body.model.' if fine else 'text_transformer.'
    sd: dict[str, Tensor] = {}

    def linear(name: str, out_dim: int, in_dim: int) -> None:
        sd[f'{name}.weight'], sd[f'{name}.bias'] = rnd(out_dim, in_dim), rnd(out_dim)

    def norm(name: str, dim: int) -> None:
        sd[f'{name}.weight'], sd[f'{name}.bias'] = 1 + rnd(dim), rnd(dim)

    swin, window = model.image, 2
    sd[img + 'patch_embed.proj.weight'], sd[img + 'patch_embed.proj.bias'] = rnd(16, 3, 4, 4), rnd(16)
    norm(img + 'patch_embed.norm', 16)
    fused = set(model.fused_image_blocks)
    widths = [16 * 2**s for s in range(len(swin.stages))]
    text_dim = 32
    for s, stage in enumerate(swin.stages):
        c, heads = widths[s], stage.blocks[0].attn.w_msa.num_heads
        for b in range(len(stage.blocks)):
            p = f'{img}layers.{s}.blocks.{b}.'
            norm(p + 'norm1', c)
            norm(p + 'norm2', c)
            linear(p + 'attn.qkv', 3 * c, c)
            linear(p + 'attn.proj', c, c)
            sd[p + 'attn.relative_position_bias_table'] = rnd((2 * window - 1) ** 2, heads)
            sd[p + 'attn.relative_position_index'] = torch.zeros(window**2, window**2, dtype=torch.long)
            linear(p + 'mlp.fc1', 4 * c, c)
            linear(p + 'mlp.fc2', c, 4 * c)
            if not fine and b % 2 == 1:
                sd[p + 'attn_mask'] = torch.zeros(4, window**2, window**2)
            if (s, b) in fused:
                linear(p + 'attn.qkv_i2t', c, c)
                linear(p + 'attn.qkv_text_i2t', 2 * c, text_dim)
                linear(p + 'attn.proj_i2t', c, c)
                sd[p + 'attn.alpha_i2t'] = rnd(1)
                if not fine:
                    norm(p + 'attn.norm_i2t_i', c)
        if s < len(swin.stages) - 1:
            norm(f'{img}layers.{s}.downsample.norm', 4 * c)
            sd[f'{img}layers.{s}.downsample.reduction.weight'] = rnd(2 * c, 4 * c)
    if fine:  # the RETINANET Swin: norm0 is an Identity
        for i in (1, 2, 3):
            norm(f'{img}norm{i}', widths[i])
        sd['module.fusion_backbone.backbone.fpn.fpn_inner2.weight'] = rnd(8, 64, 1, 1)
        sd['module.rpn.head.cls_logits.weight'] = rnd(2, 8)
    else:
        norm(img + 'norm', widths[-1])
        linear('itm_score.fc', 2, 64)
        sd['image_queue'] = rnd(32, 8)
    sd[txt + 'embeddings.word_embeddings.weight'] = rnd(64, text_dim)
    sd[txt + 'embeddings.position_embeddings.weight'] = rnd(24, text_dim)
    sd[txt + 'embeddings.token_type_embeddings.weight'] = rnd(1, text_dim)
    sd[txt + 'embeddings.position_ids'] = torch.arange(24)[None]
    norm(txt + 'embeddings.LayerNorm', text_dim)
    pairs = dict(zip(model.fused_text_layers, model.fused_image_blocks, strict=True))
    for i in range(6):
        p = f'{txt}encoder.layer.{i}.'
        for name in ('query', 'key', 'value'):
            linear(f'{p}attention.self.{name}', text_dim, text_dim)
        linear(p + 'attention.output.dense', text_dim, text_dim)
        norm(p + 'attention.output.LayerNorm', text_dim)
        linear(p + 'intermediate.dense', 64, text_dim)
        linear(p + 'output.dense', text_dim, 64)
        norm(p + 'output.LayerNorm', text_dim)
        if i in pairs:
            context = widths[pairs[i][0]]
            linear(p + 'crossattention_t2i.self.query', text_dim, text_dim)
            linear(p + 'crossattention_t2i.self.key', text_dim, context)
            linear(p + 'crossattention_t2i.self.value', text_dim, context)
            linear(p + 'crossattention_t2i.output.dense', text_dim, text_dim)
            if not fine:
                norm(p + 'crossattention_t2i.output.LayerNorm', text_dim)
        if i in pairs or not fine:  # the coarse-grained RobertaLayer makes a gate in every layer
            sd[p + 'alpha_t2i'] = rnd(1)
    if not fine:
        linear(txt + 'pooler.dense', text_dim, text_dim)
    return sd


@pytest.mark.parametrize('flavour', ['fine', 'coarse'])
def test_official_fiber_key_map_covers_every_parameter(flavour: str) -> None:
    fine = flavour == 'fine'
    image = {**TINY_IMAGE, 'out_indices': (1, 2, 3) if fine else (3,)}
    model = FIBERBackbone(image=image, text=TINY_TEXT, fusion_layers=K, image_query_norm=not fine).eval()
    official = _official_fiber_state_dict(model, flavour)
    tensors, unused = convert_fiber_checkpoint(official, model)
    assert set(tensors) == {name for name, _ in model.named_parameters()}
    missing = load_converted(model, tensors)
    assert missing and all(key.endswith('relative_position_index') for key in missing)
    assert len(tensors) + len(unused) == len(official) - 2 * K  # text key + value -> one kv_proj (w, b)
    reasons = ' '.join(unused.values())
    assert 'heads, FPN, queues' in reasons and 'rebuilds' in reasons
    img = 'module.fusion_backbone.backbone.body.' if fine else 'vit_model.'
    txt = 'module.fusion_backbone.language_backbone.body.model.' if fine else 'text_transformer.'
    assert torch.equal(
        model.text_cross_attn[3].kv_proj.weight,
        torch.cat(
            [official[f'{txt}encoder.layer.5.crossattention_t2i.self.{n}.weight'] for n in ('key', 'value')]
        ),
    )
    assert torch.equal(
        model.image_cross_attn[0].kv_proj.weight, official[f'{img}layers.2.blocks.2.attn.qkv_text_i2t.weight']
    )
    assert torch.equal(model.image_cross_attn[2].alpha, official[f'{img}layers.3.blocks.0.attn.alpha_i2t'])
    # Patch merging after the reorder equals the official concat-norm-reduce.
    x = torch.randn(2, 8, 8, 32)
    merged = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    p = f'{img}layers.1.downsample.'
    merged = F.layer_norm(merged, (128,), official[p + 'norm.weight'], official[p + 'norm.bias'])
    expected = rearrange(merged @ official[p + 'reduction.weight'].t(), 'b h w c -> b (h w) c')
    with torch.no_grad():
        ours, hw = model.image.stages[1].downsample(rearrange(x, 'b h w c -> b (h w) c'), (8, 8))
    assert hw == (4, 4) and (ours - expected).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match='set fusion_layers to match'):
        convert_fiber_checkpoint(official, FIBERBackbone(image=image, text=TINY_TEXT, fusion_layers=2))


def test_fiber_t_preset_params_and_fusion_flops() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = FIBERBackbone(preset='fiber-t').eval()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.image) == 27_520_698  # mmdet Swin-T with its four output norms
    assert count(model.text) == 124_055_040  # RoBERTa-base without the pooler
    d, heads_ok = 768, all(m.num_heads in (12, 24) for m in model.image_cross_attn)
    fusion = 0
    for s, _ in model.fused_image_blocks:
        c = 96 * 2**s
        fusion += (c * c + c) * 2 + (d * 2 * c + 2 * c) + 1  # image side: q, out, kv from text, alpha
        fusion += (d * d + d) * 2 + (c * 2 * d + 2 * d) + 1  # text side: q, out, kv from image, alpha
    assert heads_ok and count(model) == 27_520_698 + 124_055_040 + fusion == 171_660_486
    assert FIBER_PRESETS['fiber-b']['image']['depths'] == (2, 2, 18, 2)
    size, length, flops = 128, 8, {}
    images, ids = torch.randn(1, 3, size, size), torch.randint(3, 1000, (1, length))
    for on in (False, True):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images, ids, fusion=on)
        flops[on] = counter.get_total_flops()
    projections = attention = 0
    for s, _ in model.fused_image_blocks:
        c, n = 96 * 2**s, (size // 4 // 2**s) ** 2
        projections += 2 * (2 * n * c * c + length * d * 2 * c) + 2 * (2 * length * d * d + n * c * 2 * d)
        attention += 4 * n * length * c + 4 * length * n * d
    # CPU SDPA may or may not be counted by FlopCounterMode; the projections always are.
    assert projections <= flops[True] - flops[False] <= projections + attention
