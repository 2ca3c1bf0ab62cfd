"""ImageCaptionDataset and the image-text transforms on Shapes World (COCO captions format)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from toolkit.registry import DATASETS

PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='SampleCaption'),
    dict(type='PackImageTextInputs'),
]


def _build(root: Path, ann_file: str = 'annotations/captions_train.json', **kwargs: object):  # type: ignore[no-untyped-def]
    cfg = dict(type='ImageCaptionDataset', data_root=str(root), ann_file=ann_file,
               data_prefix=dict(img_path='images/train/'), pipeline=PIPELINE, **kwargs)  # fmt: skip
    return DATASETS.build(cfg)


def test_one_record_per_image_with_all_captions(shapes_tiny: Path) -> None:
    dataset = _build(shapes_tiny)
    ann = json.loads((shapes_tiny / 'annotations/captions_train.json').read_text())
    assert len(dataset) == len(ann['images'])
    info = dataset.get_data_info(0)
    expected = [a['caption'] for a in ann['annotations'] if a['image_id'] == info['img_id']]
    assert info['captions'] == expected and len(expected) == 5


def test_pipeline_packs_image_and_a_sampled_caption(shapes_tiny: Path) -> None:
    dataset = _build(shapes_tiny)
    random.seed(0)
    seen = set()
    for _ in range(20):
        item = dataset[0]
        assert item['inputs'].shape == (3, 32, 32) and item['inputs'].dtype == torch.uint8
        sample = item['data_samples']
        assert sample.text in sample.gt_captions
        assert sample.img_id == dataset.get_data_info(0)['img_id']
        seen.add(sample.text)
    assert len(seen) > 1, 'SampleCaption always picked the same caption'


def _write_ann(root: Path, images: list, annotations: list) -> str:
    path = root / 'annotations' / 'bad.json'
    path.write_text(json.dumps(dict(images=images, annotations=annotations)))
    return 'annotations/bad.json'


@pytest.mark.parametrize(
    'images,annotations,match',
    [
        (
            [{'id': 1, 'file_name': '../secret.jpg'}],
            [{'image_id': 1, 'caption': 'x'}],
            'escapes the data root',
        ),
        ([{'id': 1, 'file_name': '/etc/passwd'}], [{'image_id': 1, 'caption': 'x'}], 'escapes the data root'),
        ([{'id': 1, 'file_name': 'missing.jpg'}], [{'image_id': 1, 'caption': 'x'}], 'missing.jpg'),
        (
            [{'id': 1, 'file_name': '000000000001.jpg'}],
            [{'image_id': 9, 'caption': 'x'}],
            'unknown image id',
        ),
        ([{'id': 1, 'file_name': '000000000001.jpg'}], [{'image_id': 1, 'caption': 3}], r'annotations\[0\]'),
    ],
)
def test_bad_annotations_name_file_and_problem(tmp_path: Path, shapes_tiny: Path, images: list,
                                               annotations: list, match: str) -> None:  # fmt: skip
    root = tmp_path / 'copy'
    (root / 'annotations').mkdir(parents=True)
    (root / 'images').symlink_to(shapes_tiny / 'images')
    ann_file = _write_ann(root, images, annotations)
    with pytest.raises((ValueError, FileNotFoundError), match=match) as err:
        _build(root, ann_file=ann_file)
    assert 'bad.json' in str(err.value)


def test_malformed_json_is_reported(tmp_path: Path) -> None:
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'broken.json').write_text('{"images": [')
    with pytest.raises(ValueError, match='broken.json.*not valid JSON'):
        _build(tmp_path, ann_file='annotations/broken.json')


def test_csv_dataset_groups_rows_by_image(tmp_path: Path, shapes_tiny: Path) -> None:
    ann = json.loads((shapes_tiny / 'annotations/captions_train.json').read_text())
    files = {img['id']: img['file_name'] for img in ann['images']}
    rows = ['filepath\ttitle'] + [f'{files[a["image_id"]]}\t{a["caption"]}' for a in ann['annotations'][:12]]
    (tmp_path / 'cc.tsv').write_text('\n'.join(rows) + '\n')
    dataset = DATASETS.build(dict(type='ImageTextCsvDataset', data_root=str(tmp_path), ann_file='cc.tsv',
                                  data_prefix=dict(img_path=str(shapes_tiny / 'images/train')),
                                  pipeline=PIPELINE))  # fmt: skip
    expected_images = len({a['image_id'] for a in ann['annotations'][:12]})
    assert len(dataset) == expected_images
    assert sum(len(dataset.get_data_info(i)['captions']) for i in range(len(dataset))) == 12
    assert dataset[0]['data_samples'].text in dataset.get_data_info(0)['captions']


def test_csv_dataset_names_missing_column(tmp_path: Path) -> None:
    (tmp_path / 'cc.tsv').write_text('path\tcaption\na.jpg\ta cat\n')
    with pytest.raises(ValueError, match=r"cc.tsv: missing column\(s\) \['filepath', 'title'\]"):
        DATASETS.build(dict(type='ImageTextCsvDataset', data_root=str(tmp_path), ann_file='cc.tsv'))


def test_flip_swaps_sides_in_text_and_mirrors_image() -> None:
    import numpy as np

    from toolkit.registry import TRANSFORMS

    flip = TRANSFORMS.build(dict(type='RandomFlipCaption', prob=1.0))
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = flip(dict(img=img.copy(), text='a red circle left of a star, top right corner',
                    captions=['bright light: left', 'leftover right']))  # fmt: skip
    assert np.array_equal(out['img'], img[:, ::-1])
    assert out['text'] == 'a red circle right of a star, top left corner'
    assert out['captions'] == ['bright light: right', 'leftover left']  # whole words only
    keep = TRANSFORMS.build(dict(type='RandomFlipCaption', prob=0.0))
    assert keep(dict(img=img.copy(), text='left'))['text'] == 'left'


def test_swap_word_negative_changes_one_word_of_a_group_and_fixes_the_article() -> None:
    from toolkit.registry import TRANSFORMS

    shapes = ['circle', 'square', 'star']
    colours = ['red', 'orange', 'blue']
    swap = TRANSFORMS.build(dict(type='SwapWordNegative', groups=[shapes, colours]))
    random.seed(0)
    seen = set()
    for _ in range(60):
        out = swap(dict(text='an orange circle left of a blue star'))
        words, negative = 'an orange circle left of a blue star'.split(), out['negative_text'].split()
        assert out['swapped_words'] == 1 and len(negative) == len(words)
        changed = [(a, b) for a, b in zip(words, negative, strict=True) if a != b and a not in ('a', 'an')]
        assert len(changed) == 1
        old, new = changed[0]
        assert {old, new} <= set(shapes) or {old, new} <= set(colours)
        if new in colours:  # 'an red' never appears
            article = negative[negative.index(new) - 1]
            assert (article == 'an') == (new[0] in 'aeiou')
        seen.add(old)
    assert seen == {'orange', 'circle', 'blue', 'star'}  # every occurrence can be the swapped one
    out = swap(dict(text='nothing to swap'))
    assert out['negative_text'] == 'swap to nothing' and out['swapped_words'] == 0
    with pytest.raises(ValueError, match='two different words'):
        TRANSFORMS.build(dict(type='SwapWordNegative', groups=[['circle']]))
    with pytest.raises(ValueError, match="'red' is in two groups"):
        TRANSFORMS.build(dict(type='SwapWordNegative', groups=[['red', 'blue'], ['red', 'star']]))
    with pytest.raises(KeyError, match='SampleCaption'):
        swap(dict(captions=['a red star']))
