"""BEiT-3 at tiny size: block-wise masking, modality routing of the Multiway Transformer, parity with
torchscale's BEiT3 through the converter, MDM and contrastive losses (finite, gradients everywhere, MDM
decreasing), the retrieval embeddings of predict, and the Shapes World configs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.structures import BaseDataElement

from pretrain.models.beit3 import MDMLoss, block_wise_mask
from pretrain.models.multiway import MultiwayTransformer, convert_torchscale_beit3
from toolkit.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = str(REPO / 'configs/_base_/tokenizers/shapes_world.json')
SHAPES_CONFIGS = sorted((REPO / 'configs/beit3').glob('beit3_tiny-*_shapes-*.py'))
TINY_BACKBONE = dict(
    type='MultiwayTransformer',
    img_size=32,
    patch_size=8,  # 4 x 4 patches
    embed_dim=32,
    depth=3,
    num_heads=2,
    ffn_dim=64,
    num_vl_layers=1,
    max_text_len=16,
)
TEXTS = [
    'a red circle above a blue square',
    'two green stars',
    'a small yellow triangle left of a red circle',
    'a blue square',
    'three red circles',
    'a green star below a yellow square',
]


def _model(**overrides) -> torch.nn.Module:
    cfg = dict(
        type='BEiT3',
        data_preprocessor=dict(type='ImgDataPreprocessor', mean=[127.5] * 3, std=[64.0] * 3),
        backbone=TINY_BACKBONE,
        tokenizer=dict(type='HFTokenizer', path=TOKENIZER, context_length=16),
        mdm_loss=dict(type='MDMLoss'),
        visual_target=dict(type='PixelTarget', patch_size=8),
        contrastive_loss=dict(type='InfoNCELoss'),
        min_mask_patches=2,
    )
    cfg.update(overrides)
    return MODELS.build(cfg)


def _batch(model: torch.nn.Module, count: int = 6) -> dict:
    images = [torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8) for _ in range(count)]
    samples = [BaseDataElement(text=TEXTS[i % len(TEXTS)]) for i in range(count)]
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)


# ---------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize('grid, min_patches', [((14, 14), 16), ((8, 8), 5)])
def test_block_wise_mask_covers_40_percent_in_rectangles(grid: tuple[int, int], min_patches: int) -> None:
    rng = random.Random(0)
    total = grid[0] * grid[1]
    target = round(0.4 * total)
    coverage, components = [], []
    for _ in range(300):
        mask, blocks = block_wise_mask(grid, target, min_num_patches=min_patches, rng=rng)
        assert mask.shape == grid and int(mask.sum()) <= target
        union = torch.zeros(grid, dtype=torch.bool)
        for top, left, height, width in blocks:
            assert height * width >= min_patches  # every block is a rectangle of at least the minimum size
            union[top : top + height, left : left + width] = True
        assert torch.equal(union, mask)  # the mask is exactly the union of its rectangles
        coverage.append(mask.float().mean().item())
        components.append(_components(mask))
    mean = sum(coverage) / len(coverage)
    assert abs(mean - 0.4) < 0.02, mean
    # Blocks, not scattered patches: a few connected regions of many patches each.
    assert sum(components) / len(components) < 0.25 * target


def _components(mask: torch.Tensor) -> int:
    seen, count = set(), 0
    cells = {(r, c) for r, c in mask.nonzero().tolist()}
    for cell in cells:
        if cell in seen:
            continue
        count += 1
        stack = [cell]
        while stack:
            r, c = stack.pop()
            if (r, c) in seen or (r, c) not in cells:
                continue
            seen.add((r, c))
            stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
    return count


def test_model_block_masks_ratio() -> None:
    torch.manual_seed(0)
    model = _model(backbone={**TINY_BACKBONE, 'img_size': 64}, min_mask_patches=None)  # 8 x 8
    masks = model.block_masks(64, torch.device('cpu'))
    assert masks.shape == (64, 64) and abs(masks.float().mean().item() - 0.4) < 0.02


# ---------------------------------------------------------------------------------------------- routing
@pytest.mark.parametrize('attention', ['shared', 'multiway'])
def test_tokens_reach_their_modality_experts(attention: str) -> None:
    torch.manual_seed(0)
    net = MODELS.build({**TINY_BACKBONE, 'attention': attention, 'vocab_size': 50}).eval()
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(net.layers):
        modules = {'ffn': layer.ffn, 'ffn.vision': layer.ffn.vision, 'ffn.language': layer.ffn.language}
        if layer.ffn.vl is not None:
            modules['ffn.vl'] = layer.ffn.vl
        if attention == 'multiway':
            modules.update({'q': layer.attn.q_proj, 'q.vision': layer.attn.q_proj.vision})
            modules['q.language'] = layer.attn.q_proj.language
        for name, module in modules.items():

            def hook(_, args, __, key=f'{index}.{name}') -> None:
                seen[key] = args[0].detach()

            handles.append(module.register_forward_hook(hook))
    images, txt_ids = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 5))
    img_len = 1 + 16
    top = net.depth - 1  # the one layer with a vision-language expert
    assert [layer.has_vl for layer in net.layers] == [False, False, True]

    def run(**inputs) -> dict[str, torch.Tensor]:
        seen.clear()
        with torch.no_grad():
            net(**inputs)
        return dict(seen)

    image = run(images=images)
    for index in range(net.depth):  # image-only: the vision expert sees every token, even in the top layer
        assert torch.equal(image[f'{index}.ffn.vision'], image[f'{index}.ffn'])
        assert f'{index}.ffn.language' not in image and f'{index}.ffn.vl' not in image
    text = run(txt_ids=txt_ids)
    for index in range(net.depth):
        assert torch.equal(text[f'{index}.ffn.language'], text[f'{index}.ffn'])
        assert f'{index}.ffn.vision' not in text and f'{index}.ffn.vl' not in text
    fused = run(images=images, txt_ids=txt_ids)
    for index in range(top):  # lower layers: image tokens to vision, text tokens to language
        assert torch.equal(fused[f'{index}.ffn.vision'], fused[f'{index}.ffn'][:, :img_len])
        assert torch.equal(fused[f'{index}.ffn.language'], fused[f'{index}.ffn'][:, img_len:])
        assert f'{index}.ffn.vl' not in fused
    assert torch.equal(fused[f'{top}.ffn.vl'], fused[f'{top}.ffn'])  # top: every token to the VL expert
    assert f'{top}.ffn.vision' not in fused and f'{top}.ffn.language' not in fused
    if attention == 'multiway':  # per-modality projections split the same way in every layer
        for index in range(net.depth):
            assert torch.equal(fused[f'{index}.q.vision'], fused[f'{index}.q'][:, :img_len])
            assert torch.equal(fused[f'{index}.q.language'], fused[f'{index}.q'][:, img_len:])
            assert image[f'{index}.q.vision'].shape[1] == img_len and f'{index}.q.language' not in image
    for handle in handles:
        handle.remove()


# ---------------------------------------------------------------------------------------------- parity
@pytest.fixture(scope='module')
def torchscale_pair() -> tuple[torch.nn.Module, MultiwayTransformer]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torchscale imports timm.models.layers (deprecated in timm 1.x)
        from torchscale.architecture.config import EncoderConfig
        from torchscale.model.BEiT3 import BEiT3 as TorchscaleBEiT3
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=50,
        img_size=32,
        patch_size=8,
        encoder_embed_dim=32,
        encoder_attention_heads=2,
        encoder_ffn_embed_dim=64,
        encoder_layers=3,
        multiway=True,
        no_output_layer=True,  # as the released BEiT-3 models
        max_source_positions=18,
    )
    reference = TorchscaleBEiT3(cfg).eval()
    ours = MultiwayTransformer(
        vocab_size=50,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=2,
        ffn_dim=64,
        num_vl_layers=0,  # torchscale has no vision-language experts
        max_text_len=16,
        attention='multiway',
    ).eval()
    ours.load_state_dict(convert_torchscale_beit3(reference.state_dict()), strict=True)
    return reference, ours


@pytest.mark.parametrize('mode', ['image', 'text', 'fused'])
def test_converter_matches_torchscale(torchscale_pair, mode: str) -> None:
    reference, ours = torchscale_pair
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    img_masked = torch.rand(3, 16) < 0.4
    txt_ids = torch.randint(0, 50, (3, 9))
    txt_mask = torch.ones(3, 9, dtype=torch.bool)
    txt_mask[1, 6:], txt_mask[2, 3:] = False, False  # padded texts
    with torch.no_grad():
        if mode == 'image':
            ref = reference(visual_tokens=images, vision_masked_position=img_masked)['encoder_out']
            out = ours(images=images, img_masked=img_masked).hidden
            valid = torch.ones(ref.shape[:2], dtype=torch.bool)
        elif mode == 'text':
            ref = reference(textual_tokens=txt_ids, text_padding_position=~txt_mask)['encoder_out']
            out = ours(txt_ids=txt_ids, txt_mask=txt_mask).hidden
            valid = txt_mask
        else:
            ref = reference(textual_tokens=txt_ids, visual_tokens=images, text_padding_position=~txt_mask)[
                'encoder_out'
            ]
            out = ours(images=images, txt_ids=txt_ids, txt_mask=txt_mask).hidden
            valid = torch.cat([torch.ones(3, 17, dtype=torch.bool), txt_mask], dim=1)
    assert out.shape == ref.shape
    diff = (out - ref).abs()[valid].max().item()
    print(f'torchscale parity, {mode}: max abs diff {diff:.3e}')
    assert diff < 1e-4


def test_converter_rejects_unknown_keys(torchscale_pair) -> None:
    reference, _ = torchscale_pair
    state = dict(reference.state_dict())
    state['encoder.layers.0.extra.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match='encoder.layers.0.extra.weight'):
        convert_torchscale_beit3(state)
    prefixed = {f'beit3.{key}': value for key, value in reference.state_dict().items()}  # unilm checkpoints
    assert set(convert_torchscale_beit3(prefixed)) == set(convert_torchscale_beit3(reference.state_dict()))


# ---------------------------------------------------------------------------------------------- losses
def test_mdm_loss_one_average_over_text_and_visual_tokens() -> None:
    torch.manual_seed(0)
    txt_logits, txt_labels = torch.randn(5, 11), torch.randint(0, 11, (5,))
    img_logits, img_ids = torch.randn(7, 13), torch.randint(0, 13, (7,))
    loss = MDMLoss()(txt_logits, txt_labels, img_logits, img_ids)
    manual = (
        F.cross_entropy(txt_logits, txt_labels, reduction='sum')
        + F.cross_entropy(img_logits, img_ids, reduction='sum')
    ) / 12
    assert torch.allclose(loss, manual)
    pixels, targets = torch.randn(7, 6), torch.randn(7, 6)
    loss = MDMLoss(pixel_weight=0.5)(txt_logits, txt_labels, pixels, targets)
    assert torch.allclose(loss, F.cross_entropy(txt_logits, txt_labels) + 0.5 * F.mse_loss(pixels, targets))


@pytest.mark.parametrize('target', ['pixels', 'vqkd'])
def test_losses_finite_and_gradients_reach_every_trainable_parameter(target: str) -> None:
    torch.manual_seed(0)
    visual = (
        dict(type='PixelTarget', patch_size=8)
        if target == 'pixels'
        else dict(
            type='VQKDTokenizer',
            img_size=32,
            patch_size=8,
            embed_dim=16,
            depth=1,
            num_heads=2,
            codebook_size=24,
            code_dim=8,
            mean=[127.5] * 3,
            std=[64.0] * 3,
        )
    )
    model = _model(visual_target=visual)
    losses = model(**_batch(model), mode='loss')
    assert set(losses) >= {'loss_mdm', 'loss_contrastive', 'acc_mlm_txt', 'acc_i2t'}
    assert ('acc_mim' if target == 'vqkd' else 'mse_mim') in losses
    total = sum(value for key, value in losses.items() if 'loss' in key)
    assert torch.isfinite(total)
    total.backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    missing = [name for name, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    if target == 'vqkd':  # the tokenizer is frozen
        assert not any(p.requires_grad for p in model.visual_target.parameters())


def test_mdm_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = _model(contrastive_loss=None)
    data = _batch(model)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(20):
        torch.manual_seed(1)  # the same groups and masks every step
        loss = model(**data, mode='loss')['loss_mdm']
        optim.zero_grad()
        loss.backward()
        optim.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0], history


def test_mixture_splits_the_batch() -> None:
    model = _model(mixture=dict(image=2, text=1, pair=0))
    groups = model.split_batch(9, torch.device('cpu'))
    assert [len(groups[kind]) for kind in ('image', 'text', 'pair')] == [6, 3, 0]
    assert sorted(torch.cat(list(groups.values())).tolist()) == list(range(9))
    with pytest.raises(ValueError, match='visual_target'):
        _model(visual_target=None)


@pytest.mark.parametrize('contrastive', [True, False])
def test_predict_gives_normalised_retrieval_embeddings(contrastive: bool) -> None:
    torch.manual_seed(0)
    model = _model(contrastive_loss=dict(type='InfoNCELoss') if contrastive else None, embed_dim=24).eval()
    images = [torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    samples = [
        BaseDataElement(gt_captions=TEXTS[:2], img_id=0),
        BaseDataElement(gt_captions=TEXTS[2:5], img_id=1),
    ]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=False)
    out = model(**data, mode='predict')
    dim = 24 if contrastive else 32  # without heads: the unprojected width
    for sample, count in zip(out, (2, 3), strict=True):
        assert sample.img_emb.shape == (dim,) and sample.txt_emb.shape == (count, dim)
        assert torch.allclose(sample.img_emb.norm(), torch.tensor(1.0), atol=1e-5)
        assert torch.allclose(sample.txt_emb.norm(dim=-1), torch.ones(count), atol=1e-5)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize('path', SHAPES_CONFIGS, ids=lambda p: p.name)
def test_shapes_configs_build_and_step(path: Path) -> None:
    torch.manual_seed(0)
    cfg = Config.fromfile(str(path))
    model = MODELS.build(cfg.model)
    assert model.backbone.grid == 8 and sum(layer.has_vl for layer in model.backbone.layers) == 2
    images = [torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8) for _ in range(3)]
    samples = [BaseDataElement(text=text) for text in TEXTS[:3]]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    assert ('loss_mdm' in losses) == ('mdm' in path.name) and ('loss_contrastive' in losses) == (
        'ret' in path.name
    )
    assert all(torch.isfinite(value) for value in losses.values())
