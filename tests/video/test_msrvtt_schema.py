"""MSR-VTT caption and MSRVTT-QA data sets reject a malformed annotation file at build, naming the record
and key (toolkit.schema; faults from toolkit.testing.broken_annotations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.schema.base import SchemaError
from toolkit.testing.broken_annotations import broken_msrvtt_qa, broken_msrvtt_videodatainfo
from video.datasets.msrvtt import MSRVTTCaptionDataset, MSRVTTQADataset


@pytest.mark.parametrize(
    'fault', ['sentence_video_unknown', 'caption_huge', 'video_id_escapes', 'id_duplicate']
)
def test_malformed_videodatainfo_fails_the_build(shapes_tiny: Path, tmp_path: Path, fault: str) -> None:
    valid = json.loads((shapes_tiny / 'msrvtt/train_val_videodatainfo.json').read_text())
    case = next(c for c in broken_msrvtt_videodatainfo(valid) if c.fault == fault)
    (tmp_path / 'bad.json').write_text(json.dumps(case.ann))
    with pytest.raises(SchemaError) as err:
        MSRVTTCaptionDataset(
            ann_file=str(tmp_path / 'bad.json'), data_prefix=dict(video_path=str(shapes_tiny))
        )
    assert err.value.file == str(tmp_path / 'bad.json')
    assert err.value.record.startswith(case.record) and err.value.key == case.key


@pytest.mark.parametrize('fault', ['video_id_name', 'answer_missing', 'question_huge'])
def test_malformed_questions_fail_the_build(shapes_tiny: Path, tmp_path: Path, fault: str) -> None:
    case = next(c for c in broken_msrvtt_qa(json.loads((shapes_tiny / 'msrvtt/train_qa.json').read_text()))
                if c.fault == fault)  # fmt: skip
    (tmp_path / 'qa.json').write_text(json.dumps(case.ann))
    with pytest.raises(SchemaError, match=rf'qa\.json: \[1\] \(id \d+\), key {case.key!r}'):
        MSRVTTQADataset(ann_file=str(tmp_path / 'qa.json'), data_prefix=dict(video_path=str(shapes_tiny)))
    # The same file as a caption data set's qa_file fails the same way.
    with pytest.raises(SchemaError, match=r'qa\.json: \[1\]'):
        MSRVTTCaptionDataset(data_root=str(shapes_tiny), ann_file='msrvtt/train_val_videodatainfo.json',
                             qa_file=str(tmp_path / 'qa.json'), check_files=False)  # fmt: skip


def test_schema_options_reach_the_check(shapes_tiny: Path, tmp_path: Path) -> None:
    case = next(c for c in broken_msrvtt_qa(json.loads((shapes_tiny / 'msrvtt/train_qa.json').read_text()))
                if c.fault == 'question_huge')  # fmt: skip
    (tmp_path / 'qa.json').write_text(json.dumps(case.ann))
    dataset = MSRVTTQADataset(ann_file=str(tmp_path / 'qa.json'), check_files=False,
                              schema_options=dict(max_caption_chars=20_000))  # fmt: skip
    assert len(dataset) == len(case.ann)
