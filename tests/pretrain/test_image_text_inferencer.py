"""ImageTextInferencer on Shapes World tiny, for the four image-text families at their Shapes World configs
(random init): it gives the numbers of each model's own test path (``test_step`` through the config's test
pipeline, then ``RetrievalMetric`` / ``predict`` captions), and refuses bad inputs naming them."""

from __future__ import annotations

import copy
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.dataset import pseudo_collate
from mmengine.structures import BaseDataElement

from pretrain.apis import ImageTextInferencer, ImageTextInputError, TaskNotSupportedError
from pretrain.evaluation.retrieval import RetrievalMetric
from toolkit.registry import DATASETS

CONFIGS = {
    'mammut': 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py',
    'albef': 'configs/albef/albef_vit-tiny-bert-tiny_1xb32-20e_shapes.py',
    'beit3': 'configs/beit3/beit3_tiny-patch16-128_1xb32-10e_shapes-ret.py',
    'fiber': 'configs/fiber/fiber_swin-tiny-roberta-tiny_1xb32-30e_shapes-pretrain.py',
    'fiber_cap': 'configs/fiber/fiber_swin-tiny-roberta-tiny_1xb32-30e_shapes-cap.py',
}
EMBEDDING = ['mammut', 'albef', 'beit3', 'fiber']
CAPTIONING = ['mammut', 'fiber_cap']
NUM_IMAGES = 8  # of the 16 test images: seconds per model on CPU
NAMES = ['circle', 'square', 'triangle']


@pytest.fixture(scope='module')
def inferencers(repo_root: Path) -> dict[str, ImageTextInferencer]:
    # Decoding from random weights runs to max_len: 8 tokens compare the same, faster (FIBER has no cache).
    options = {family: {'model.generation.max_len': 8} for family in CAPTIONING}
    out = {}
    for family, config in CONFIGS.items():
        torch.manual_seed(0)
        out[family] = ImageTextInferencer(
            repo_root / config, cfg_options=options.get(family), batch_size=NUM_IMAGES
        )
    return out


def _model_path(inferencer: ImageTextInferencer, root: Path) -> list[BaseDataElement]:
    """The model's own test path: the config's test data set (pipeline) on ``root``, one ``test_step``."""
    cfg = copy.deepcopy(inferencer.cfg.test_dataloader.dataset)
    cfg.update(data_root=f'{root}/', indices=NUM_IMAGES)
    dataset = DATASETS.build(cfg)
    return inferencer.model.test_step(pseudo_collate([dataset[i] for i in range(len(dataset))]))


@pytest.fixture(scope='module')
def reference(inferencers: dict[str, ImageTextInferencer], shapes_tiny: Path) -> dict[str, list]:
    return {family: _model_path(inferencer, shapes_tiny) for family, inferencer in inferencers.items()}


def _paths(samples: list[BaseDataElement]) -> list[str]:
    return [sample.img_path for sample in samples]


def _captions(samples: list[BaseDataElement]) -> list[str]:
    return [text for sample in samples for text in sample.gt_captions]


def _recalls(i2t: torch.Tensor, t2i: torch.Tensor, txt_to_img: torch.Tensor) -> dict[str, float]:
    """Recall@K of rankings (best first): an image is right when one of its captions is in its top K."""
    out = {}
    for k in (1, 5, 10):
        hits_i2t = [(txt_to_img[row[:k]] == img).any() for img, row in enumerate(i2t)]
        hits_t2i = [(row[:k] == txt_to_img[txt]).any() for txt, row in enumerate(t2i)]
        out[f'i2t_R@{k}'] = float(torch.stack(hits_i2t).double().mean())
        out[f't2i_R@{k}'] = float(torch.stack(hits_t2i).double().mean())
    return out


@pytest.mark.parametrize('family', EMBEDDING)
def test_retrieve_equals_the_model_evaluation(
    family: str, inferencers: dict[str, ImageTextInferencer], reference: dict[str, list]
) -> None:
    inferencer, samples = inferencers[family], reference[family]
    texts = _captions(samples)
    result = inferencer.retrieve(_paths(samples), texts)
    # RetrievalMetric's matrix: the predicted img_emb (N, E) against every caption's txt_emb (M, E).
    img_emb = torch.stack([s.img_emb for s in samples]).float()
    txt_emb = torch.cat([s.txt_emb for s in samples]).float()
    torch.testing.assert_close(result.similarity, img_emb @ txt_emb.T, atol=1e-5, rtol=0)
    assert result.i2t.shape == (len(samples), len(texts)) and result.t2i.shape == (len(texts), len(samples))
    assert (result.similarity.gather(1, result.i2t).diff(dim=1) <= 0).all()
    assert (result.similarity.T.gather(1, result.t2i).diff(dim=1) <= 0).all()

    # The recalls of the rankings are RetrievalMetric's (plain, and re-ranked by ITM where the model has it).
    metric = RetrievalMetric(rerank_k=4 if inferencer.model.supports_matching else 0)
    metric.process({}, samples)
    metrics = metric.compute_metrics(metric.results)
    owner = torch.tensor([i for i, s in enumerate(samples) for _ in s.gt_captions])
    for key, value in _recalls(result.i2t, result.t2i, owner).items():
        assert value == pytest.approx(metrics[key]), key
    if inferencer.model.supports_matching:
        reranked = inferencer.retrieve(_paths(samples), texts, rerank_k=4)
        assert reranked.rerank_k == 4 and torch.equal(reranked.similarity, result.similarity)
        assert not torch.equal(reranked.i2t, result.i2t)  # the ITM head re-ordered something
        for key, value in _recalls(reranked.i2t, reranked.t2i, owner).items():
            assert value == pytest.approx(metrics[f'itm_{key}']), key
    else:
        with pytest.raises(TaskNotSupportedError, match=type(inferencer.model).__name__):
            inferencer.retrieve(_paths(samples), texts, rerank_k=4)


@pytest.mark.parametrize('family', EMBEDDING)
def test_embeddings_and_inputs(
    family: str, inferencers: dict[str, ImageTextInferencer], reference: dict[str, list], tmp_path: Path
) -> None:
    inferencer, paths = inferencers[family], _paths(reference[family])
    img_emb = inferencer.encode_image(paths)
    txt_emb = inferencer.encode_text(['a red circle', 'a blue square and a green triangle', 'a circle'])
    assert img_emb.shape[0] == NUM_IMAGES and txt_emb.shape == (3, img_emb.shape[1])
    torch.testing.assert_close(img_emb.norm(dim=-1), torch.ones(NUM_IMAGES))
    torch.testing.assert_close(txt_emb.norm(dim=-1), torch.ones(3))
    # A folder (sorted file names), single paths and RGB arrays decoded as the loader does give the same.
    folder = tmp_path / 'images'
    folder.mkdir()
    for path in paths:
        (folder / Path(path).name).symlink_to(path)
    (folder / 'notes.txt').write_text('not an image, skipped by extension')
    torch.testing.assert_close(inferencer.encode_image(folder), img_emb, atol=1e-6, rtol=0)
    torch.testing.assert_close(inferencer.encode_image(paths[0]), img_emb[:1], atol=1e-6, rtol=0)
    arrays = [mmcv.imread(path, channel_order='rgb') for path in paths]
    torch.testing.assert_close(inferencer.encode_image(arrays), img_emb, atol=1e-6, rtol=0)
    torch.testing.assert_close(inferencer.encode_image(arrays[1]), img_emb[1:2], atol=1e-6, rtol=0)
    inferencer.batch_size = 3  # streamed in batches of 3, 3 and 2 images
    try:
        torch.testing.assert_close(inferencer.encode_image(paths), img_emb, atol=1e-5, rtol=0)
    finally:
        inferencer.batch_size = NUM_IMAGES


@pytest.mark.parametrize('family', EMBEDDING)
def test_zero_shot_classify(family: str, inferencers: dict, reference: dict[str, list]) -> None:
    inferencer, paths = inferencers[family], _paths(reference[family])
    templates = ('a {}', 'a photo of a {}.')
    ranked = inferencer.zero_shot_classify(paths, NAMES, templates=templates)
    class_emb = F.normalize(
        inferencer.encode_text([t.format(n) for n in NAMES for t in templates]).view(3, 2, -1).mean(1), dim=-1
    )
    sim = inferencer.encode_image(paths) @ class_emb.T
    scale = float(inferencer.model.current_logit_scale().detach())
    assert len(ranked) == NUM_IMAGES
    for row, sim_row in zip(ranked, sim, strict=True):
        probs = [prob for _, prob in row]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5) and probs == sorted(probs, reverse=True)
        assert [name for name, _ in row] == [NAMES[int(i)] for i in sim_row.argsort(descending=True)]
        expected = (scale * sim_row).softmax(-1).sort(descending=True).values
        torch.testing.assert_close(torch.tensor(probs), expected)
    assert [n for n, _ in inferencer.zero_shot_classify(paths[:1], NAMES)[0]]  # the default template


@pytest.mark.parametrize('family', CAPTIONING)
def test_caption_equals_predict(family: str, inferencers: dict, reference: dict[str, list]) -> None:
    inferencer, samples = inferencers[family], reference[family]
    captions = inferencer.caption(_paths(samples))
    assert captions == [sample.pred_caption for sample in samples]
    short = inferencer.caption(_paths(samples)[:2], beam_size=1, max_len=3)
    assert len(short) == 2 and all(len(caption.split()) <= 3 for caption in short)


@pytest.mark.parametrize(
    ('family', 'call', 'match'),
    [
        ('albef', 'caption', 'ALBEF .* does not caption'),
        ('beit3', 'caption', 'BEiT3 .* does not caption'),
        ('fiber', 'caption', 'FIBER .*shapes-pretrain.py.* does not caption'),
        ('fiber_cap', 'encode_image', 'FIBER .*shapes-cap.py.* does not embed'),
        ('fiber_cap', 'retrieve', 'FIBER .* does not embed'),
    ],
)
def test_unsupported_tasks_name_the_model(
    family: str, call: str, match: str, inferencers: dict, reference: dict[str, list]
) -> None:
    inferencer, paths = inferencers[family], _paths(reference['mammut'])[:1]
    args = (paths, ['a circle']) if call == 'retrieve' else (paths,)
    with pytest.raises(TaskNotSupportedError, match=match):
        getattr(inferencer, call)(*args)


def test_bad_inputs_raise_naming_them(inferencers: dict, reference: dict[str, list], tmp_path: Path) -> None:
    inferencer, paths = inferencers['mammut'], _paths(reference['mammut'])
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'this is not an image\n')
    (tmp_path / 'empty').mkdir()
    cases = [
        ([paths[0], broken], r'broken\.jpg.*not an image'),
        (tmp_path / 'missing.png', r'missing\.png does not exist'),
        (tmp_path / 'empty', r'folder .*empty has no image files'),
        ([], 'no images'),
        (np.zeros((8, 8), dtype=np.uint8), r'image array 0: expected RGB uint8'),
        ([paths[0], np.zeros((8, 8, 3), dtype=np.float32)], r'image array 1'),
    ]
    for images, match in cases:
        with pytest.raises(ImageTextInputError, match=match):
            inferencer.encode_image(images)
    with pytest.raises(ImageTextInputError, match='no texts'):
        inferencer.encode_text([])
    with pytest.raises(ImageTextInputError, match='text 1'):
        inferencer.retrieve(paths[:1], ['a circle', '  '])
    with pytest.raises(ImageTextInputError, match='no class names'):
        inferencer.zero_shot_classify(paths[:1], [])
    with pytest.raises(ImageTextInputError, match='has no {}'):
        inferencer.zero_shot_classify(paths[:1], NAMES, templates=('a photo',))
    assert issubclass(ImageTextInputError, ValueError)


def test_no_state_kept_between_calls(inferencers: dict, reference: dict[str, list]) -> None:
    """Calls in any order give the same numbers: nothing is cached in the model or the inferencer."""
    inferencer, paths = inferencers['albef'], _paths(reference['albef'])
    first = inferencer.retrieve(paths[:3], ['a circle', 'a square'], rerank_k=2)
    inferencer.encode_image(paths[3:])
    inferencer.zero_shot_classify(paths[:2], NAMES)
    again = inferencer.retrieve(paths[:3], ['a circle', 'a square'], rerank_k=2)
    assert torch.equal(first.similarity, again.similarity) and torch.equal(first.i2t, again.i2t)
    assert torch.equal(first.t2i, again.t2i)
    assert not any(isinstance(value, torch.Tensor) for value in vars(inferencer).values())
