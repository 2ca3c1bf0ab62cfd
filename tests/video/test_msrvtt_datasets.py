"""MSR-VTT caption and MSRVTT-QA datasets on Shapes World tiny: records, splits, video lists, errors."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from mmengine.logging import MMLogger

from toolkit.registry import DATASETS
from video.datasets.msrvtt import MSRVTTCaptionDataset, MSRVTTQADataset
from video.datasets.transforms import VideoDecodeError

TRAIN_VAL = 'msrvtt/train_val_videodatainfo.json'
TEST = 'msrvtt/test_videodatainfo.json'


def _json(root: Path, rel: str):
    return json.loads((root / rel).read_text())


def _caption(root: Path, **kwargs) -> MSRVTTCaptionDataset:
    return MSRVTTCaptionDataset(data_root=str(root), **{'ann_file': TRAIN_VAL, **kwargs})


@pytest.fixture
def shapes_copy(shapes_tiny: Path, tmp_path: Path) -> Path:
    """A private copy of the MSR-VTT part of Shapes World tiny, safe to damage."""
    root = tmp_path / 'sw'
    shutil.copytree(shapes_tiny / 'msrvtt', root / 'msrvtt')
    shutil.copytree(shapes_tiny / 'videos', root / 'videos')
    return root


def test_caption_records_match_json(shapes_tiny: Path) -> None:
    ann = _json(shapes_tiny, TRAIN_VAL)
    ds = _caption(shapes_tiny, split=('train', 'validate'))
    assert len(ds) == len(ann['videos'])
    sentences = Counter(s['video_id'] for s in ann['sentences'])
    for i in range(len(ds)):
        record = ds.get_data_info(i)
        video = next(v for v in ann['videos'] if v['video_id'] == record['video_id'])
        assert record['img_id'] == video['id'] and isinstance(record['img_id'], int)
        assert record['category'] == video['category']
        assert record['modality'] == 'video'
        assert len(record['captions']) == sentences[record['video_id']]
        assert record['video_path'] == str(shapes_tiny / 'videos' / f'{record["video_id"]}.mp4')
        assert record['total_frames'] == 16  # read from the header during the pre-flight check
    assert sum(len(ds.get_data_info(i)['captions']) for i in range(len(ds))) == len(ann['sentences'])


def test_caption_split_selection(shapes_tiny: Path) -> None:
    ann = _json(shapes_tiny, TRAIN_VAL)
    counts = Counter(v['split'] for v in ann['videos'])
    assert len(_caption(shapes_tiny)) == counts['train']  # default split: train only
    assert len(_caption(shapes_tiny, split='validate')) == counts['validate']
    test = MSRVTTCaptionDataset(data_root=str(shapes_tiny), ann_file=TEST, split='test')
    assert len(test) == len(_json(shapes_tiny, TEST)['videos'])
    with pytest.raises(ValueError, match=r"no video with split \['val'\].*validate"):
        _caption(shapes_tiny, split='val')


def test_video_list_csv_and_txt(shapes_tiny: Path, tmp_path: Path) -> None:
    ann = _json(shapes_tiny, TRAIN_VAL)
    # One training and the validation video: a list selects regardless of the json's split.
    chosen = [
        ann['videos'][2]['video_id'],
        next(v['video_id'] for v in ann['videos'] if v['split'] == 'validate'),
    ]
    (tmp_path / 'list.txt').write_text('\n'.join(chosen) + '\n\n')
    (tmp_path / 'train.9k.csv').write_text('video_id,other\n' + ''.join(f'{v},x\n' for v in chosen))
    for name in ('list.txt', 'train.9k.csv'):
        ds = _caption(shapes_tiny, video_list=str(tmp_path / name))
        assert [ds.get_data_info(i)['video_id'] for i in range(len(ds))] == chosen
        assert len(ds.get_data_info(1)['captions']) == 5  # the json's sentences
    # Relative to data_root, as a config names it.
    (shapes_tiny / 'msrvtt' / 'sel.txt').write_text(chosen[0])
    try:
        assert len(_caption(shapes_tiny, video_list='msrvtt/sel.txt')) == 1
    finally:
        (shapes_tiny / 'msrvtt' / 'sel.txt').unlink()


def test_video_list_sentences_replace_references(shapes_tiny: Path, tmp_path: Path) -> None:
    """A JSFusion 1k-A style CSV: its ``sentence`` column is the only reference."""
    ann = _json(shapes_tiny, TEST)
    ids = [v['video_id'] for v in ann['videos']]
    rows = ''.join(f'ret{i},msr{i},{v},a sentence for {v}\n' for i, v in enumerate(ids))
    (tmp_path / 'jsfusion_test.csv').write_text('key,vid_key,video_id,sentence\n' + rows)
    ds = MSRVTTCaptionDataset(
        data_root=str(shapes_tiny), ann_file=TEST, video_list=str(tmp_path / 'jsfusion_test.csv')
    )
    assert len(ds) == len(ids)
    for i, video_id in enumerate(ids):
        record = ds.get_data_info(i)
        assert record['video_id'] == video_id and record['captions'] == [f'a sentence for {video_id}']


def test_video_list_errors(shapes_tiny: Path, tmp_path: Path) -> None:
    (tmp_path / 'bad.csv').write_text('vid\nvideo0\n')
    with pytest.raises(ValueError, match=r'bad\.csv.*video_id'):
        _caption(shapes_tiny, video_list=str(tmp_path / 'bad.csv'))
    (tmp_path / 'unknown.txt').write_text('video0\nvideo9999\n')
    with pytest.raises(ValueError, match=r'unknown\.txt.*video9999'):
        _caption(shapes_tiny, video_list=str(tmp_path / 'unknown.txt'))
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        _caption(shapes_tiny, video_list=str(tmp_path / 'nope.txt'))


def test_qa_records(shapes_tiny: Path) -> None:
    for name in ('train_qa.json', 'val_qa.json', 'test_qa.json'):
        ann = _json(shapes_tiny, f'msrvtt/{name}')
        ds = MSRVTTQADataset(data_root=str(shapes_tiny), ann_file=f'msrvtt/{name}')
        assert len(ds) == len(ann)
        for i in (0, len(ds) - 1):
            record, qa = ds.get_data_info(i), ann[i]
            assert record['img_id'] == qa['video_id'] and isinstance(record['img_id'], int)
            assert record['question'] == qa['question'] and record['answer'] == qa['answer']
            assert record['question_id'] == qa['id'] and record['question_type'] == qa['category_id']
            assert record['video_path'].endswith(f'videos/video{qa["video_id"]}.mp4')
            assert record['modality'] == 'video' and record['total_frames'] == 16


def test_clear_errors(shapes_tiny: Path, tmp_path: Path) -> None:
    (tmp_path / 'bad.json').write_text('{"videos": [')
    with pytest.raises(ValueError, match=r'bad\.json: not valid JSON'):
        MSRVTTCaptionDataset(ann_file=str(tmp_path / 'bad.json'))
    with pytest.raises(ValueError, match=r'bad\.json: not valid JSON'):
        MSRVTTQADataset(ann_file=str(tmp_path / 'bad.json'))
    with pytest.raises(FileNotFoundError, match='missing.json'):
        MSRVTTCaptionDataset(ann_file=str(tmp_path / 'missing.json'))
    (tmp_path / 'nosent.json').write_text(json.dumps({'videos': []}))
    with pytest.raises(ValueError, match=r"nosent\.json: top level, key 'sentences': expected a list"):
        MSRVTTCaptionDataset(ann_file=str(tmp_path / 'nosent.json'))
    (tmp_path / 'qa.json').write_text(json.dumps([{'question': 'q?', 'answer': 'a', 'id': 0}]))
    with pytest.raises(ValueError, match=r"qa\.json: \[0\] \(id 0\), key 'video_id': expected an integer"):
        MSRVTTQADataset(ann_file=str(tmp_path / 'qa.json'))
    # Path escapes.
    escape = {'videos': [{'video_id': '../../etc/passwd', 'id': 0, 'split': 'train', 'category': 0}],
              'sentences': [{'video_id': '../../etc/passwd', 'caption': 'x', 'sen_id': 0}]}  # fmt: skip
    (tmp_path / 'escape.json').write_text(json.dumps(escape))
    with pytest.raises(ValueError, match=r'escape\.json.*escapes the data root'):
        MSRVTTCaptionDataset(ann_file=str(tmp_path / 'escape.json'))
    # A video id with no file.
    ann = _json(shapes_tiny, TRAIN_VAL)
    ann['videos'].append({'video_id': 'video777', 'id': 777, 'split': 'train', 'category': 1})
    ann['sentences'].append({'video_id': 'video777', 'caption': 'a ghost', 'sen_id': 999})
    (tmp_path / 'ghost.json').write_text(json.dumps(ann))
    with pytest.raises(FileNotFoundError, match=r'video777\.mp4 \(video id 777\) does not exist'):
        MSRVTTCaptionDataset(
            ann_file=str(tmp_path / 'ghost.json'), data_prefix=dict(video_path=str(shapes_tiny / 'videos'))
        )
    # Without the check the build succeeds (the file is then only opened by the pipeline).
    ds = MSRVTTCaptionDataset(
        ann_file=str(tmp_path / 'ghost.json'),
        data_prefix=dict(video_path=str(shapes_tiny / 'videos')),
        check_files=False,
    )
    assert len(ds) == len(ann['videos']) - 1  # the validation video is not in the default split


def test_unreadable_videos_skip_and_raise(shapes_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    videos = shapes_copy / 'videos'
    truncated = videos / 'video1.mp4'
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbled = videos / 'video3.mp4'
    garbled.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(VideoDecodeError, match=r'video1\.mp4: truncated'):
        _caption(shapes_copy)

    messages: list[str] = []
    monkeypatch.setattr(MMLogger.get_current_instance(), 'warning', lambda msg, *a, **k: messages.append(msg))
    ds = _caption(shapes_copy, on_unreadable='skip')
    qa = MSRVTTQADataset(data_root=str(shapes_copy), ann_file='msrvtt/train_qa.json', on_unreadable='skip')
    ann = _json(shapes_copy, TRAIN_VAL)
    assert ds.num_skipped == 2 and [Path(p).name for p in ds.skipped] == ['video1.mp4', 'video3.mp4']
    assert len(ds) == sum(v['split'] == 'train' for v in ann['videos']) - 2
    assert {ds.get_data_info(i)['video_id'] for i in range(len(ds))}.isdisjoint({'video1', 'video3'})
    qa_ann = _json(shapes_copy, 'msrvtt/train_qa.json')
    assert qa.num_skipped == 2 and len(qa) == sum(q['video_id'] not in (1, 3) for q in qa_ann)
    assert len(messages) == 2  # one warning per dataset, with the count and the names
    assert 'skipped 2 unreadable video(s)' in messages[0]
    assert 'video1.mp4' in messages[0] and 'video3.mp4' in messages[0]


def test_pipeline_through_registry(shapes_tiny: Path) -> None:
    caption_pipeline = [
        dict(type='SampleFrames', num_frames=4, mode='random_segment'),
        dict(type='DecodeVideo', backend='decord'),
        dict(type='ResizeVideo', scale=(32, 32)),
        dict(type='SampleCaption'),
        dict(type='RandomFlipVideo', prob=0.5),
        dict(type='PackVideoTextInputs'),
    ]
    ds = DATASETS.build(
        dict(
            type='MSRVTTCaptionDataset',
            data_root=str(shapes_tiny),
            ann_file=TRAIN_VAL,
            pipeline=caption_pipeline,
        )
    )
    item = ds[0]
    assert item['inputs'].shape == (3, 4, 32, 32) and item['inputs'].dtype == torch.uint8
    sample = item['data_samples']
    assert sample.text in sample.gt_captions and len(sample.gt_captions) == 5  # flipped together
    assert sample.img_id == ds.get_data_info(0)['img_id'] and sample.video_id == 'video0'

    qa_pipeline = [
        dict(type='SampleFrames', num_frames=3),
        dict(type='DecodeVideo', backend='pyav'),
        dict(type='PackVideoTextInputs'),
    ]
    qa = DATASETS.build(
        dict(
            type='MSRVTTQADataset',
            data_root=str(shapes_tiny),
            ann_file='msrvtt/test_qa.json',
            pipeline=qa_pipeline,
            test_mode=True,
        )
    )
    item = qa[len(qa) - 1]
    record = qa.get_data_info(len(qa) - 1)
    assert item['inputs'].shape == (3, 3, 64, 64)
    sample = item['data_samples']
    assert sample.question == record['question'] and sample.gt_answer == record['answer']
    assert sample.question_id == record['question_id'] and sample.question_type == record['question_type']
    assert sample.frame_inds.tolist() == [2, 8, 13]  # the centres of 3 segments of 16 frames


def test_caption_records_with_their_questions(shapes_tiny: Path) -> None:
    """``qa_file``: every caption record carries its video's questions as lists, in the QA file's order."""
    qa = _json(shapes_tiny, 'msrvtt/train_qa.json')
    ds = _caption(shapes_tiny, qa_file='msrvtt/train_qa.json')
    total = 0
    for i in range(len(ds)):
        record = ds.get_data_info(i)
        expected = [q for q in qa if q['video_id'] == record['img_id']]
        assert record['question'] == [q['question'] for q in expected]
        assert record['answer'] == [q['answer'] for q in expected]
        assert record['question_id'] == [q['id'] for q in expected]
        assert record['question_type'] == [q['category_id'] for q in expected]
        total += len(expected)
    assert total == len(qa)  # the train questions are on the train videos
    pipeline = [
        dict(type='SampleFrames', num_frames=2),
        dict(type='DecodeVideo'),
        dict(type='RandomFlipVideo', prob=1.0),
        dict(type='PackVideoTextInputs'),
    ]
    ds = _caption(shapes_tiny, qa_file='msrvtt/train_qa.json', pipeline=pipeline)
    sample = ds[0]['data_samples']
    record = ds.get_data_info(0)
    flip = {
        'left': 'right',
        'right': 'left',
        'clockwise': 'counterclockwise',
        'counterclockwise': 'clockwise',
    }
    assert sample.gt_answer == [flip.get(a, a) for a in record['answer']]
    assert sample.question_id == record['question_id'] and len(sample.question) == len(record['question'])


def test_qa_question_pattern_selects_one_kind_of_question(shapes_tiny: Path) -> None:
    questions = json.loads((shapes_tiny / 'msrvtt/train_qa.json').read_text())
    wanted = [q for q in questions if q['question'].startswith('how many')]
    ds = DATASETS.build(
        dict(
            type='MSRVTTQADataset',
            data_root=str(shapes_tiny),
            ann_file='msrvtt/train_qa.json',
            question_pattern=r'^how many',
        )  # fmt: skip
    )
    assert len(ds) == len(wanted) > 0
    assert all(ds.get_data_info(i)['question'].startswith('how many') for i in range(len(ds)))
    common = dict(type='MSRVTTQADataset', data_root=str(shapes_tiny), ann_file='msrvtt/train_qa.json')
    with pytest.raises(ValueError, match="no questions matching 'never'"):
        DATASETS.build(dict(common, question_pattern='never'))
    with pytest.raises(ValueError, match='not a valid regex'):
        DATASETS.build(dict(common, question_pattern='('))
