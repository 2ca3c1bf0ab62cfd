"""video.apis.VideoTextInferencer on Shapes World tiny clips: the captions of ``tools/video_caption_eval.py``
on the same checkpoint, answers and retrieval on real clips, arrays equal to paths, folders, and the typed
error for every input a caller can get wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pytest
import torch

from video.apis import PreparedClip, RetrievalResult, VideoInputError, VideoTextInferencer

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'configs/mammut/mammut_tubevit-tiny-dec4_1xb32-40e_shapes-vid.py'
TEXTS = ['a red circle moves left', 'a blue square turns clockwise', 'the yellow circle shrinks in size']


def _data(root: Path) -> list[str]:
    return [f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')]


def _test_clips(root: Path) -> dict[int, Path]:
    """``{video id: file}`` of the test split, in the order of its data infos."""
    videos = json.loads((root / 'msrvtt/test_videodatainfo.json').read_text())['videos']
    return {int(v['id']): root / 'videos' / f'{v["video_id"]}.mp4' for v in videos}


def _all_frames(path: Path) -> np.ndarray:
    """Every frame of ``path`` (T, H, W, 3) uint8 RGB, read here with decord (not through the inferencer)."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.fixture(scope='module')
def random_inferencer() -> VideoTextInferencer:
    """The Shapes World video model at random initialisation (no training needed), short captions."""
    torch.manual_seed(0)
    return VideoTextInferencer(REPO / CONFIG, cfg_options={'model.generation.max_len': 4})


@pytest.fixture(scope='module')
def trained(video_shapes_run: Path) -> VideoTextInferencer:
    return VideoTextInferencer(REPO / CONFIG, video_shapes_run / 'epoch_2.pth')


# ---------------------------------------------------------------------------------- same as the eval tool
@pytest.mark.slow
def test_captions_equal_video_caption_eval(
    trained: VideoTextInferencer, video_shapes_run: Path, shapes_tiny: Path, tmp_path: Path
) -> None:
    work = tmp_path / 'eval'
    command = [sys.executable, 'tools/video_caption_eval.py', CONFIG, str(video_shapes_run / 'epoch_2.pth'),
               '--work-dir', str(work), '--beam-size', '2', '--max-len', '8', '--num-show', '0',
               '--cfg-options', *_data(shapes_tiny)]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_tool = {
        int(p['image_id']): p['caption'] for p in json.loads((work / 'predictions_test.json').read_text())
    }

    clips = _test_clips(shapes_tiny)
    assert sorted(by_tool) == sorted(clips)
    # One batch of the test clips in their data-info order, as the tool's test loader (batch 32) has them.
    captions = trained.caption(list(clips.values()), method='beam', beam_size=2, max_len=8, batch_size=32)
    assert dict(zip(clips, captions, strict=True)) == by_tool
    # The model's generation settings are untouched by the call's overrides.
    assert trained.model.generation == dict(method='beam', beam_size=3, max_len=32)


# ---------------------------------------------------------------------------------- tasks on real clips
@pytest.mark.slow
def test_answer_and_retrieve_on_real_clips(trained: VideoTextInferencer, shapes_tiny: Path) -> None:
    paths = list(_test_clips(shapes_tiny).values())
    question = 'what does the shape do?'
    answers = trained.answer(paths, question)
    assert len(answers) == len(paths) and all(isinstance(a, str) for a in answers)
    assert trained.answer(paths, [question] * len(paths), batch_size=1) == answers
    questions = [question, 'what colour is the shape?', 'which way does the shape move?']
    captions, per_clip = trained.caption_and_answer(paths, questions, max_len=8)
    assert captions == trained.caption(paths, max_len=8)
    assert per_clip == trained.answer(paths, questions)

    result = trained.retrieve(paths, TEXTS)
    assert isinstance(result, RetrievalResult)
    assert result.clips == [str(p) for p in paths] and result.texts == TEXTS
    assert result.similarity.shape == (len(paths), len(TEXTS)) and result.similarity.device.type == 'cpu'
    # Cosine similarities of the separately computed embeddings, clip by clip (batch size 1).
    vid_emb, txt_emb = trained.encode_video(paths, batch_size=1), trained.encode_text(TEXTS)
    assert torch.allclose(vid_emb.norm(dim=1), torch.ones(len(paths)), atol=1e-5)
    torch.testing.assert_close(result.similarity, vid_emb @ txt_emb.t(), atol=1e-5, rtol=0)
    ranking = result.text_ranking()
    assert sorted(ranking[0].tolist()) == list(range(len(TEXTS)))
    best = result.similarity.gather(1, ranking[:, :1])[:, 0]
    assert torch.equal(best, result.similarity.max(dim=1).values)
    assert result.best_texts() == [TEXTS[int(i)] for i in ranking[:, 0]]
    assert result.text_ranking(2).shape == (len(paths), 2)
    assert result.clip_ranking(1)[:, 0].tolist() == result.similarity.argmax(dim=0).tolist()


# ---------------------------------------------------------------------------------- input forms
def test_arrays_give_what_their_files_give(random_inferencer: VideoTextInferencer, shapes_tiny: Path) -> None:
    paths = [shapes_tiny / 'videos/video9.mp4', shapes_tiny / 'videos/video11.mp4']
    frames = [_all_frames(path) for path in paths]
    assert frames[0].shape == (16, 64, 64, 3)  # every frame: the config samples all 16
    by_path = random_inferencer.prepare(paths)
    by_array = random_inferencer.prepare(frames)
    for path_clip, array_clip in zip(by_path, by_array, strict=True):
        assert torch.equal(path_clip.inputs, array_clip.inputs)
        assert np.array_equal(path_clip.frame_inds, array_clip.frame_inds)
    assert [clip.source for clip in by_array] == ['clips[0]', 'clips[1]']
    assert random_inferencer.caption(frames) == random_inferencer.caption(paths)
    assert torch.equal(
        random_inferencer.encode_video(np.stack(frames)), random_inferencer.encode_video(paths)
    )
    # Prepared clips run without the pipeline; mixing forms keeps the order.
    mixed = [by_path[0], frames[1]]
    assert torch.equal(random_inferencer.encode_video(mixed), random_inferencer.encode_video(paths))
    # An array of another length is sampled as a file of that many frames: 32 frames, every other taken.
    doubled = np.repeat(frames[0], 2, axis=0)
    clip = random_inferencer.prepare(doubled)[0]
    assert clip.total_frames == 32 and clip.frames.shape == (16, 64, 64, 3)
    assert torch.equal(clip.inputs, by_path[0].inputs)


def test_a_folder_is_its_video_files_sorted(
    random_inferencer: VideoTextInferencer, shapes_tiny: Path, tmp_path: Path
) -> None:
    folder = tmp_path / 'clips'
    folder.mkdir()
    for name in ('b.mp4', 'a.MP4', 'c.mp4'):
        (folder / name).write_bytes((shapes_tiny / 'videos/video9.mp4').read_bytes())
    (folder / 'notes.txt').write_text('not a clip')
    clips = random_inferencer.prepare(folder)
    assert all(isinstance(c, PreparedClip) for c in clips)
    assert [Path(c.source).name for c in clips] == ['a.MP4', 'b.mp4', 'c.mp4']
    assert len(random_inferencer.caption([folder, shapes_tiny / 'videos/video10.mp4'], batch_size=2)) == 4


# ---------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_a_typed_error_naming_them(
    random_inferencer: VideoTextInferencer, shapes_tiny: Path, tmp_path: Path
) -> None:
    clip = shapes_tiny / 'videos/video9.mp4'
    fake = tmp_path / 'notes.mp4'
    fake.write_text('a text file, renamed\n')
    with pytest.raises(VideoInputError, match='a text file, not a video') as info:
        random_inferencer.caption([clip, fake])
    assert info.value.source == str(fake) and str(info.value).startswith(f'{fake}: ')
    assert isinstance(info.value, ValueError)

    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('no clips here')
    with pytest.raises(VideoInputError, match='holds no video files') as info:
        random_inferencer.caption(empty)
    assert info.value.source == str(empty)
    with pytest.raises(VideoInputError, match='no such file or folder') as info:
        random_inferencer.encode_video([clip, tmp_path / 'missing.mp4'])
    assert info.value.source == str(tmp_path / 'missing.mp4')
    with pytest.raises(VideoInputError, match=r'clips\[1\]: expected frames \(T, H, W, 3\) uint8'):
        random_inferencer.caption([clip, np.zeros((4, 64, 64, 3), dtype=np.float32)])
    with pytest.raises(VideoInputError, match='clips: no clips given'):
        random_inferencer.caption([])

    with pytest.raises(VideoInputError, match='questions: 2 questions for 3 clips'):
        random_inferencer.answer([clip] * 3, ['what colour is it?', 'what does it do?'])
    with pytest.raises(VideoInputError, match=r"questions\[1\]: expected a non-empty text, got '  '"):
        random_inferencer.caption_and_answer([clip] * 2, ['what colour is it?', '  '])
    with pytest.raises(VideoInputError, match=r"texts\[1\]: expected a non-empty text, got ''"):
        random_inferencer.retrieve(clip, ['a red circle', ''])
    with pytest.raises(VideoInputError, match='texts: no texts given'):
        random_inferencer.encode_text([])


def test_refuses_a_config_without_a_video_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='without a video tokenizer'):
        VideoTextInferencer(REPO / 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py')
