"""tools/demo/ovd_demo.py with random-init tiny FIBER and MaMMUT detectors (Shapes World configs).

An image, a folder and an H.264 video in, drawings and detections.json out; boxes in the input's own pixels
(a 200 x 150 image gives its 128 x 96 resized copy's boxes times 1.5625; 256 x 192 for MaMMUT, times 1.28),
labels from the given names (novel ones included), frame indices that follow --frame-stride, clear errors
naming the file, and pickled objects in a checkpoint refused. MaMMUT: the names are embedded once for all
images (the inferencer's cache), the threshold and --max-dets reach its two-stage head without changing the
model's test_cfg, and names that embed to NaN are refused before any input is read."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import av
import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image, ImageDraw

from detection.apis import DetectionInputError, OVDetInferencer
from toolkit.checkpoint import UnsafeCheckpointError
from toolkit.registry import MODELS, TRANSFORMS
from toolkit.testing.scripts import load_script
from toolkit.video_io import VideoWriter

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / 'configs/fiber/fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov.py')
MAMMUT_CONFIG = REPO / 'configs/mammut/mammut_vit-tiny-dec4_sfp-rcnn_1xb16-12e_shapes-ov.py'
BASE = ('red circle', 'blue square', 'green triangle')  # base categories of Shapes World
NOVEL = ('red triangle', 'purple circle')  # never in a training prompt (the ov split's novel names)


def _load_demo() -> ModuleType:
    return load_script(REPO / 'tools/demo/ovd_demo.py')


demo = _load_demo()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init checkpoint in tools/train.py's format (plain tensors and containers)."""
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(CONFIG).model)
    model.init_weights()
    path = tmp_path_factory.mktemp('ckpt') / 'epoch_1.pth'
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(
        dict(meta=dict(epoch=1, iter=2, seed=0, dataset_meta=dict(classes=BASE)), state_dict=state), path
    )
    return path


@pytest.fixture(scope='module')
def mammut(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny MaMMUT detector config with no pretrained MaMMUT (its work_dirs checkpoint is not in the
    repository) and a random-init checkpoint of it in tools/train.py's format."""
    folder = tmp_path_factory.mktemp('mammut')
    config = folder / 'mammut_tiny_random.py'
    config.write_text(f'_base_ = [{str(MAMMUT_CONFIG)!r}]\nmodel = dict(pretrained=None)\n')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    model.init_weights()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    checkpoint = folder / 'epoch_1.pth'
    torch.save(dict(meta=dict(epoch=1, dataset_meta=dict(classes=BASE)), state_dict=state), checkpoint)
    return config, checkpoint


def _shapes(width: int, height: int, seed: int) -> np.ndarray:
    """An RGB image with a few coloured shapes on a grey background."""
    rng = np.random.default_rng(seed)
    image = Image.new('RGB', (width, height), (128, 120, 110))
    draw = ImageDraw.Draw(image)
    for colour in ((215, 35, 35), (35, 75, 215), (35, 160, 50)):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        size = int(rng.integers(22, 40))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + size, y + size), fill=colour)
        else:
            draw.polygon([(x, y + size), (x + size // 2, y), (x + size, y + size)], fill=colour)
    return np.asarray(image)


def _save(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)
    return path


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 8) -> Path:
    with VideoWriter(str(path), fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def _decode_video(path: Path) -> tuple[str, float, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(stream)]
        return stream.codec_context.name, float(stream.average_rate), frames


def _args(
    source: Path, out: Path, checkpoint: Path, texts: str, *extra: str, config: str | Path = CONFIG
) -> list[str]:
    return [str(source), '--texts', texts, '--config', str(config), '--checkpoint', str(checkpoint),
            '--out', str(out), '--score-thr', '0', *extra]  # fmt: skip


def _check_detections(entry: dict, names: tuple[str, ...], width: int, height: int) -> None:
    dets = entry['detections']
    assert dets, entry['source']  # score_thr 0: a random-init model still gives boxes
    assert (entry['width'], entry['height']) == (width, height)
    assert [d['score'] for d in dets] == sorted((d['score'] for d in dets), reverse=True)
    for det in dets:
        x1, y1, x2, y2 = det['bbox']
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height, det
        assert det['name'] in names and names[det['label']] == det['name'] and 0.0 <= det['score'] <= 1.0


def test_an_empty_name_list_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    image = _save(tmp_path / 'scene.png', _shapes(64, 64, seed=1))
    with pytest.raises(DetectionInputError, match='names no category'):
        demo.main(_args(image, tmp_path / 'out', checkpoint, ' . '))


def test_single_image_with_novel_names(tmp_path: Path, checkpoint: Path) -> None:
    image = _save(tmp_path / 'scene.png', _shapes(128, 128, seed=1))
    out = tmp_path / 'out'
    output = demo.main(_args(image, out, checkpoint, 'red triangle . purple circle', '--max-dets', '4'))
    saved = json.loads((out / 'detections.json').read_text())
    assert saved['results'] == output['results'] and saved['results'][0]['names'] == list(NOVEL)
    assert [r['source'] for r in saved['results']] == [str(image)] and saved['results'][0]['frame'] is None
    assert len(saved['results'][0]['detections']) == 4
    _check_detections(saved['results'][0], NOVEL, 128, 128)
    drawn = mmcv.imread(str(out / 'vis/scene.jpg'))
    assert drawn.shape == (128, 128, 3)


def _image_folder(tmp_path: Path, *, size: int, seed: int) -> tuple[Path, np.ndarray]:
    """``images/``: a square and a wide (200 x 150) image, the wide one as the config's test pipeline resizes
    it (``size`` the detection size; the network sees the same pixels), a broken PNG. Returns the folder
    and the wide image (RGB)."""
    folder = tmp_path / 'images'
    folder.mkdir()
    _save(folder / 'a_square.png', _shapes(128, 128, seed=seed))
    wide = _shapes(200, 150, seed=seed + 1)
    _save(folder / 'b_wide.png', wide)
    resize = TRANSFORMS.build(dict(type='Resize', scale=(size, size), keep_ratio=True))
    resized = resize(dict(img=wide[..., ::-1]))['img']
    assert resized.shape == (size * 3 // 4, size, 3)
    mmcv.imwrite(resized, str(folder / 'c_small.png'))
    (folder / 'd_broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    return folder, wide


def test_folder_boxes_in_original_pixels_and_bad_files(tmp_path: Path, checkpoint: Path) -> None:
    names = BASE + NOVEL[:1]
    folder, wide = _image_folder(tmp_path, size=128, seed=2)
    (folder / 'notes.txt').write_text('not an image')

    with pytest.raises(DetectionInputError, match=r'd_broken\.png.*cannot be decoded'):
        demo.main(_args(folder, tmp_path / 'fail', checkpoint, ' . '.join(names)))

    out = tmp_path / 'out'
    saved = demo.main(_args(folder, out, checkpoint, ' . '.join(names), '--skip-bad', '--max-dets', '6'))
    written = json.loads((out / 'detections.json').read_text())
    assert saved['results'] == written['results'] and saved['skipped'] == written['skipped']
    assert [Path(s['source']).name for s in saved['skipped']] == ['d_broken.png']
    by_name = {Path(r['source']).name: r for r in saved['results']}
    assert list(by_name) == ['a_square.png', 'b_wide.png', 'c_small.png']  # sorted, .txt ignored
    sizes = {'a_square.png': (128, 128), 'b_wide.png': (200, 150), 'c_small.png': (128, 96)}
    for name, (width, height) in sizes.items():
        _check_detections(by_name[name], names, width, height)
        assert mmcv.imread(str(out / 'vis' / name.replace('.png', '.jpg'))).shape == (height, width, 3)
    # Boxes are mapped back to the input's pixels: 200 x 150 was seen at 128 x 96 (scale 0.64).
    big, small = by_name['b_wide.png']['detections'], by_name['c_small.png']['detections']
    assert [d['label'] for d in big] == [d['label'] for d in small]
    np.testing.assert_allclose([d['score'] for d in big], [d['score'] for d in small], atol=1e-4)
    np.testing.assert_allclose(
        [d['bbox'] for d in big], [[v / 0.64 for v in d['bbox']] for d in small], atol=0.05
    )


def test_video_frames_follow_the_stride(tmp_path: Path, checkpoint: Path) -> None:
    frames = [np.roll(_shapes(128, 96, seed=4), 6 * i, axis=1) for i in range(10)]
    video = _write_video(tmp_path / 'clip.mp4', frames)
    out = tmp_path / 'out'
    names = BASE[:2] + NOVEL
    args = _args(video, out, checkpoint, ' . '.join(names), '--frame-stride', '3', '--batch-size', '3',
                 '--max-dets', '3')  # fmt: skip
    saved = demo.main(args)
    assert [r['frame'] for r in saved['results']] == [0, 3, 6, 9]  # two batches: 0, 3, 6 and 9
    assert {r['source'] for r in saved['results']} == {str(video)}
    for entry in saved['results']:
        _check_detections(entry, names, 128, 96)
    codec, fps, drawn = _decode_video(out / 'vis/clip.mp4')
    assert codec in ('h264', 'mpeg4') and len(drawn) == 4 and drawn[0].shape == (96, 128, 3)
    assert fps == pytest.approx(8 / 3, rel=1e-3)


def test_missing_input_and_corrupt_video_name_the_file(tmp_path: Path, checkpoint: Path) -> None:
    missing = tmp_path / 'nowhere.png'
    with pytest.raises(DetectionInputError, match='nowhere.png does not exist'):
        demo.main(_args(missing, tmp_path / 'out', checkpoint, 'red circle'))
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(64))
    with pytest.raises(DetectionInputError, match=r'broken\.mp4'):
        demo.main(_args(broken, tmp_path / 'out', checkpoint, 'red circle'))


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    image = _save(tmp_path / 'scene.png', _shapes(128, 128, seed=5))
    state = torch.load(checkpoint, weights_only=True)
    state['meta']['hook'] = json.dumps  # a function reference: unpickling it would import and resolve it
    unsafe = tmp_path / 'unsafe.pth'
    torch.save(state, unsafe)
    with pytest.raises(UnsafeCheckpointError, match=r'unsafe\.pth.*json\.dumps'):
        demo.main(_args(image, tmp_path / 'out', checkpoint=unsafe, texts='red circle'))
    assert not (tmp_path / 'out').exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------- MaMMUT
def test_mammut_single_image_with_novel_names(tmp_path: Path, mammut: tuple[Path, Path]) -> None:
    config, checkpoint = mammut
    image = _save(tmp_path / 'scene.png', _shapes(128, 128, seed=6))  # detected at 256 x 256
    out = tmp_path / 'out'
    args = _args(image, out, checkpoint, 'red triangle . purple circle', '--max-dets', '5', config=config)
    output = demo.main(args)
    saved = json.loads((out / 'detections.json').read_text())
    assert saved['results'] == output['results'] and saved['results'][0]['names'] == list(NOVEL)
    assert saved['config'] == str(config) and saved['skipped'] == []
    assert [r['source'] for r in saved['results']] == [str(image)] and saved['results'][0]['frame'] is None
    assert len(saved['results'][0]['detections']) == 5
    _check_detections(saved['results'][0], NOVEL, 128, 128)
    assert mmcv.imread(str(out / 'vis/scene.jpg')).shape == (128, 128, 3)


def test_mammut_folder_boxes_in_original_pixels(tmp_path: Path, mammut: tuple[Path, Path]) -> None:
    config, checkpoint = mammut
    names = BASE + NOVEL
    folder, wide = _image_folder(tmp_path, size=256, seed=7)  # the MaMMUT config detects at 256 px

    out = tmp_path / 'out'
    args = _args(folder, out, checkpoint, ' . '.join(names), '--skip-bad', '--max-dets', '8', config=config)
    saved = demo.main(args)
    assert saved['results'] == json.loads((out / 'detections.json').read_text())['results']
    assert all(r['names'] == list(names) for r in saved['results'])
    assert [Path(s['source']).name for s in saved['skipped']] == ['d_broken.png']
    by_name = {Path(r['source']).name: r for r in saved['results']}
    assert list(by_name) == ['a_square.png', 'b_wide.png', 'c_small.png']
    sizes = {'a_square.png': (128, 128), 'b_wide.png': (200, 150), 'c_small.png': (256, 192)}
    for name, (width, height) in sizes.items():
        _check_detections(by_name[name], names, width, height)
        assert len(by_name[name]['detections']) == 8
        assert mmcv.imread(str(out / 'vis' / name.replace('.png', '.jpg'))).shape == (height, width, 3)
    # Boxes are mapped back to the input's pixels: 200 x 150 was seen at 256 x 192 (scale 1.28).
    big, small = by_name['b_wide.png']['detections'], by_name['c_small.png']['detections']
    assert [d['label'] for d in big] == [d['label'] for d in small]
    np.testing.assert_allclose([d['score'] for d in big], [d['score'] for d in small], atol=1e-4)
    np.testing.assert_allclose(
        [d['bbox'] for d in big], [[v / 1.28 for v in d['bbox']] for d in small], atol=0.05
    )


def test_mammut_names_embedded_once_and_thresholds_per_call(mammut: tuple[Path, Path]) -> None:
    config, checkpoint = mammut
    names = BASE + NOVEL
    inferencer = OVDetInferencer(str(config), checkpoint)
    model = inferencer.model
    rcnn_before = dict(model.test_cfg.rcnn)
    images = [_shapes(96, 64, seed=9), _shapes(64, 64, seed=10)]
    calls: list[int] = []
    original = model.vlm.encode_text
    model.vlm.encode_text = lambda texts: calls.append(len(texts)) or original(texts)  # type: ignore[method-assign]
    results = inferencer(images, names, score_thr=0.0002, max_dets=3, batch_size=1)
    results += inferencer(images, ' . '.join(names), score_thr=0.0002, max_dets=3)
    assert calls == [len(names)]  # one text pass for both calls and all four images
    assert dict(model.test_cfg.rcnn) == rcnn_before  # the call's thresholds did not touch the model
    for result, (height, width) in zip(results, [(64, 96), (64, 64)] * 2, strict=True):
        entry = result.to_dict()
        _check_detections(entry, names, width, height)
        assert len(entry['detections']) <= 3 and all(d['score'] >= 0.0002 for d in entry['detections'])


def test_mammut_nan_embeddings_are_refused_before_input(tmp_path: Path, mammut: tuple[Path, Path]) -> None:
    config, checkpoint = mammut
    image = _save(tmp_path / 'scene.png', _shapes(64, 64, seed=11))
    state = torch.load(checkpoint, weights_only=True)
    state['state_dict']['vlm.text_decoder.text_proj.weight'][0, 0] = float('nan')
    broken = tmp_path / 'nan.pth'
    torch.save(state, broken)
    with pytest.raises(DetectionInputError, match=r"names \['red circle', 'red triangle'\].*non-finite"):
        demo.main(_args(image, tmp_path / 'out', broken, 'red circle . red triangle', config=config))
    assert not (tmp_path / 'out').exists()  # refused before anything was written


def test_cfg_options_chunk_fiber_prompts(tmp_path: Path, checkpoint: Path) -> None:
    """--cfg-options model.test_cfg.chunked_size=2: three names in two prompts, the same boxes as one."""
    image = _save(tmp_path / 'scene.png', _shapes(128, 128, seed=12))
    texts = ' . '.join(BASE)
    one = demo.main(_args(image, tmp_path / 'one', checkpoint, texts, '--max-dets', '5'))
    two = demo.main(_args(image, tmp_path / 'two', checkpoint, texts, '--max-dets', '5',
                          '--cfg-options', 'model.test_cfg.chunked_size=2'))  # fmt: skip
    assert [d['name'] for d in two['results'][0]['detections']] != [] and len(
        two['results'][0]['detections']
    ) == 5
    assert {d['name'] for d in one['results'][0]['detections'] + two['results'][0]['detections']} <= set(BASE)
