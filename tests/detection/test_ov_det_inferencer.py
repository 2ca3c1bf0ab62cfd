"""detection.apis.OVDetInferencer: the same detections as tools/test.py, every input form, bad input named.

The equality tests run ``tools/test.py`` on Shapes World tiny's test split with the metric's
``outfile_prefix`` (mmdet writes the detections as a COCO results JSON) and the inferencer on the same image
files with the data set's vocabulary, and compare every box and score (1e-5): once at the config's own test
thresholds (``score_thr=None``) and once at a threshold that drops part of them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from detection.apis import DetectionInputError, OVDetInferencer, parse_names
from toolkit.registry import MODELS
from toolkit.video_io import VideoWriter

REPO = Path(__file__).resolve().parents[2]
FIBER = 'configs/fiber/fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov.py'
MAMMUT = REPO / 'configs/mammut/mammut_vit-tiny-dec4_sfp-rcnn_1xb16-12e_shapes-ov.py'
NAMES = ('red circle', 'blue square', 'green triangle')


@pytest.fixture(scope='module')
def mammut(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny MaMMUT detector config without its pretrained MaMMUT file and a random-init checkpoint."""
    folder = tmp_path_factory.mktemp('mammut_api')
    config = folder / 'mammut_tiny_random.py'
    config.write_text(f'_base_ = [{str(MAMMUT)!r}]\nmodel = dict(pretrained=None)\n')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    model.init_weights()
    checkpoint = folder / 'epoch_1.pth'
    torch.save(dict(meta=dict(epoch=1), state_dict=model.state_dict()), checkpoint)
    return config, checkpoint


def _test_py_detections(
    run_tool, det_data_options, config, checkpoint, data: Path, out: Path, options
) -> list:
    prefix = out / 'preds'
    run_tool('tools/test.py', str(config), str(checkpoint), '--work-dir', str(out), '--cfg-options',
             *det_data_options(data, 'test'), f'test_evaluator.outfile_prefix={prefix}',
             *[f'{key}={value}' for key, value in options.items()])  # fmt: skip
    return json.loads((out / 'preds.bbox.json').read_text())


def _by_image(results: list[dict]) -> dict[int, list[tuple]]:
    grouped: dict[int, list[tuple]] = defaultdict(list)
    for r in results:
        grouped[r['image_id']].append((r['category_id'], r['score'], *r['bbox']))
    return {k: sorted(v, key=lambda d: (d[0], -d[1], d[2], d[3])) for k, v in grouped.items()}


def _assert_same(ours: list[dict], theirs: list[dict]) -> None:
    a, b = _by_image(ours), _by_image(theirs)
    assert a.keys() == b.keys()
    for image_id in a:
        assert len(a[image_id]) == len(b[image_id]), image_id
        x, y = np.array(a[image_id]), np.array(b[image_id])
        assert (x[:, 0] == y[:, 0]).all()
        assert np.abs(x[:, 1:] - y[:, 1:]).max() <= 1e-5, image_id


def _vocabulary(data: Path) -> tuple[list[str], list[str], Path]:
    ann = data / 'annotations/instances_test.json'
    coco = json.loads(ann.read_text())
    files = [str(data / 'images/test' / image['file_name']) for image in coco['images']]
    return [c['name'] for c in coco['categories']], files, ann


@pytest.mark.slow
@pytest.mark.parametrize('detector', ['fiber', 'mammut'])
def test_same_detections_as_test_py(
    detector, fiber_shapes_run, mammut, shapes_tiny, run_tool, det_data_options, tmp_path
) -> None:
    config, checkpoint = (FIBER, fiber_shapes_run / 'epoch_1.pth') if detector == 'fiber' else mammut
    # The 2-iteration FIBER scores below its config's threshold: both sides keep every name score.
    options = {'model.test_cfg.score_thr': 0.0} if detector == 'fiber' else {}
    theirs = _test_py_detections(
        run_tool, det_data_options, config, checkpoint, shapes_tiny, tmp_path, options
    )
    assert theirs, 'tools/test.py found nothing: the comparison would be empty'
    names, files, ann = _vocabulary(shapes_tiny)
    inferencer = OVDetInferencer(str(REPO / config), checkpoint, cfg_options=options)
    # tools/test.py batches 32 images: the same batch gives the same padding
    results = inferencer(files, names, score_thr=None, max_dets=None, batch_size=32,
                         out_dir=tmp_path / 'api', categories=ann)  # fmt: skip
    _assert_same(json.loads((tmp_path / 'api/results.json').read_text()), theirs)
    assert sum(len(r.detections) for r in results) == len(theirs)

    # A user threshold above the config's: test.py's detections at or above it, applied once by the model.
    threshold = float(np.quantile([d['score'] for d in theirs], 0.75))
    if detector == 'fiber':  # FIBER's config thresholds the name score s, the final is sqrt(s * centerness)
        threshold = max(threshold, float(inferencer.model.test_cfg.get('score_thr', 0.0)) ** 0.5)
    kept = [d for d in theirs if d['score'] >= threshold]
    assert kept and len(kept) < len(theirs)
    inferencer(files, names, score_thr=threshold, max_dets=None, batch_size=32, out_dir=tmp_path / 'thr',
               categories=ann)  # fmt: skip
    _assert_same(json.loads((tmp_path / 'thr/results.json').read_text()), kept)
    assert inferencer.vocab_encodings == 1  # the second call used the cached vocabulary


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 8) -> Path:
    with VideoWriter(str(path), fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


@pytest.fixture(scope='module')
def fiber_random() -> OVDetInferencer:
    torch.manual_seed(0)
    return OVDetInferencer(str(REPO / FIBER))


def test_input_forms_agree(fiber_random: OVDetInferencer, shapes_tiny: Path, tmp_path: Path) -> None:
    files = sorted((shapes_tiny / 'images/val').glob('*.jpg'))[:3]
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for file in files:
        (folder / file.name).write_bytes(file.read_bytes())
    arrays = [np.asarray(Image.open(file).convert('RGB')) for file in files]
    kw = dict(score_thr=0.0, max_dets=10)
    by_path = fiber_random([str(f) for f in files], list(NAMES), **kw)
    by_folder = fiber_random(str(folder), ' . '.join(NAMES), **kw)
    by_array = fiber_random(arrays, [NAMES] * 3, **kw)  # one vocabulary per input
    assert [Path(r.source).name for r in by_folder] == [f.name for f in files]
    assert [r.source for r in by_array] == ['<array 0>', '<array 1>', '<array 2>']
    for a, b, c in zip(by_path, by_folder, by_array, strict=True):
        assert a.detections == b.detections
        assert 0 < len(a.detections) <= 10 and (a.width, a.height) == (128, 128)
        # PIL's JPEG decoder and OpenCV's may differ by a grey level: near, not equal
        for d, e in zip(a.detections, c.detections, strict=True):
            assert d.name == e.name and abs(d.score - e.score) < 0.05
    for result in by_path:
        scores = [d.score for d in result.detections]
        assert scores == sorted(scores, reverse=True)
        assert all(d.name in NAMES and NAMES[d.label] == d.name for d in result.detections)
    assert fiber_random.vocab_encodings == 1  # three calls, one vocabulary


def test_video_frames_and_outputs(fiber_random: OVDetInferencer, shapes_tiny: Path, tmp_path: Path) -> None:
    files = sorted((shapes_tiny / 'images/val').glob('*.jpg'))[:5]
    frames = [np.asarray(Image.open(file).convert('RGB')) for file in files]
    video = _write_video(tmp_path / 'clip.mp4', frames)
    results = fiber_random(
        str(video), NAMES, score_thr=0.0, max_dets=3, frame_stride=2, out_dir=tmp_path / 'o'
    )
    assert [r.frame for r in results] == [0, 2, 4] and all(r.source == str(video) for r in results)
    assert sorted(p.name for p in (tmp_path / 'o/vis').iterdir()) == ['clip.mp4']
    with av.open(str(tmp_path / 'o/vis/clip.mp4')) as container:  # the 3 processed frames, drawn
        stream = container.streams.video[0]
        assert len(list(container.decode(stream))) == 3 and float(stream.average_rate) == pytest.approx(4)
    coco = json.loads((tmp_path / 'o/results.json').read_text())
    assert len(coco) == sum(len(r.detections) for r in results) and {d['image_id'] for d in coco} == {0, 1, 2}
    assert {d['category_id'] for d in coco} <= {1, 2, 3}
    saved = json.loads((tmp_path / 'o/detections.json').read_text())
    assert saved['frame_stride'] == 2 and saved['skipped'] == [] and saved['checkpoint'] is None
    assert saved['results'][1]['frame'] == 2 and saved['results'][1]['detections'][0]['name'] in NAMES


def test_skip_bad_inputs_when_asked(fiber_random: OVDetInferencer, shapes_tiny: Path, tmp_path: Path) -> None:
    good = sorted((shapes_tiny / 'images/val').glob('*.jpg'))[0]
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    results = fiber_random([str(good), str(broken)], NAMES, on_error='skip', out_dir=tmp_path / 'o')
    assert [r.error is None for r in results] == [True, False] and 'broken.png' in results[1].error
    saved = json.loads((tmp_path / 'o/detections.json').read_text())
    assert [s['source'] for s in saved['skipped']] == [str(broken)] and len(saved['results']) == 1
    with pytest.raises(DetectionInputError, match='broken.png'):
        fiber_random([str(good), str(broken)], NAMES)


def test_bad_input_is_named(fiber_random: OVDetInferencer, tmp_path: Path) -> None:
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image')
    fake_video = tmp_path / 'fake.mp4'
    fake_video.write_text('not a video')
    (tmp_path / 'empty').mkdir()
    cases = [
        (str(text), NAMES, 'notes.jpg'),
        (str(fake_video), NAMES, 'fake.mp4'),
        (str(tmp_path / 'empty'), NAMES, 'has no image files'),
        (str(tmp_path / 'missing.png'), NAMES, 'does not exist'),
        (str(tmp_path / 'notes.txt'), NAMES, 'does not exist'),
        (np.zeros((8, 8), np.uint8), NAMES, 'RGB uint8'),
        (np.zeros((8, 8, 3), np.uint8), [], 'no category names'),
        (np.zeros((8, 8, 3), np.uint8), ['a', 'a'], "['a'] appear more than once"),
        (np.zeros((8, 8, 3), np.uint8), [NAMES, NAMES], '2 vocabularies for 1 inputs'),
        (np.zeros((8, 8, 3), np.uint8), [f'shape {i}' for i in range(200)], 'tokens'),
    ]
    for inputs, texts, message in cases:
        with pytest.raises(DetectionInputError, match=message.replace('[', r'\[').replace(']', r'\]')):
            fiber_random(inputs, texts)


def test_parse_names() -> None:
    assert parse_names('red circle . blue square .') == ('red circle', 'blue square')
    assert parse_names(' st. bernard . dog, small ') == ('st. bernard', 'dog, small')
    with pytest.raises(DetectionInputError, match='names no category'):
        parse_names(' . ')


def test_not_a_detector_is_refused() -> None:
    with pytest.raises(TypeError, match='not an open-vocabulary detector'):
        OVDetInferencer(str(REPO / 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py'))
