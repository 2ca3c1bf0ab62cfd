"""End to end on Shapes World tiny videos: train, save, resume and test the video config (captioning,
retrieval and QA metrics); the caption evaluation tool on clips; joint image + video fine-tuning from an
image-only MaMMUT checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolkit.checkpoint import safe_load

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'configs/mammut/mammut_tubevit-tiny-dec4_1xb32-40e_shapes-vid.py'
JOINT = 'configs/mammut/mammut_tubevit-b16-dec12_32xb16-10e_coco-msrvtt-cap.py'
SMALL = [
    'train_dataloader.batch_size=4',
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'model.generation.beam_size=2',
    'model.generation.max_len=8',
]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _data(root: Path) -> list[str]:
    return [f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')]


@pytest.mark.slow
def test_video_train_resume_test_and_caption_eval(
    shapes_tiny: Path, tmp_path: Path, video_shapes_run: Path
) -> None:
    work = video_shapes_run  # tools/train.py for one epoch, then --resume for a second (tests/conftest.py)
    first = safe_load(work / 'epoch_1.pth')
    # Shapes World tiny: 12 videos, 70 % (8) for training -> 2 iterations of 4 clips.
    assert first['meta']['iter'] == 2
    second = safe_load(work / 'epoch_2.pth')
    assert second['meta']['iter'] == 4
    gate = second['state_dict']['video_tokenizer.pos_gate']
    assert gate.abs().sum() > 0, 'the fixed-embedding gate did not train'

    test_dir = tmp_path / 'test'
    _run('tools/test.py', CONFIG, str(work / 'epoch_2.pth'), '--work-dir', str(test_dir), '--cfg-options',
         *_data(shapes_tiny), *SMALL[3:])  # fmt: skip
    metrics = json.loads((test_dir / 'metrics.json').read_text())
    for key in ('retrieval/i2t_R@1', 'caption/CIDEr', 'vqa/accuracy', 'vqa/num_questions'):
        assert key in metrics, sorted(metrics)
    questions = json.loads((shapes_tiny / 'msrvtt/test_qa.json').read_text())
    assert metrics['vqa/num_questions'] == len(questions)
    motion = [q for q in questions if q['question'].startswith('which way does')]
    assert ('vqa/accuracy_motion' in metrics) == bool(motion)

    # The caption evaluation tool on the same checkpoint: beam search over the decoded test clips.
    eval_dir = tmp_path / 'eval'
    proc = _run('tools/video_caption_eval.py', CONFIG, str(work / 'epoch_2.pth'), '--work-dir', str(eval_dir),
                '--beam-size', '2', '--max-len', '8', '--cfg-options', *_data(shapes_tiny))  # fmt: skip
    assert 'CIDEr' in proc.stdout and 'METEOR' in proc.stdout
    preds = json.loads((eval_dir / 'predictions_test.json').read_text())
    test_videos = json.loads((shapes_tiny / 'msrvtt/test_videodatainfo.json').read_text())['videos']
    assert sorted(p['image_id'] for p in preds) == sorted(v['id'] for v in test_videos)


@pytest.mark.slow
def test_joint_image_video_finetune_from_image_checkpoint(shapes_tiny: Path, tmp_path: Path) -> None:
    """The joint COCO + MSR-VTT config, shrunk, on Shapes World images and clips, from an image checkpoint."""
    from mmengine.config import Config

    from toolkit.engine import build_runner
    from toolkit.registry import MODELS

    cfg = Config.fromfile(str(REPO / JOINT))
    tiny = dict(embed_dim=64, depth=2, num_heads=2)
    cfg.model.image_encoder.update(tiny, img_size=64, grad_checkpointing=False, detection_grid=None)
    cfg.model.text_decoder.update(width=64, depth=2, num_heads=2)
    cfg.model.update(embed_dim=32, generation=dict(method='greedy', max_len=6))
    cfg.model.tokenizer = dict(
        type='HFTokenizer', path=str(REPO / 'configs/_base_/tokenizers/shapes_world.json'), context_length=32
    )
    # An image-only MaMMUT of the same sizes stands for the COCO-pretrained checkpoint.
    image_cfg = cfg.model.to_dict()
    image_cfg.pop('video_tokenizer')
    image_cfg['data_preprocessor'] = None
    torch.manual_seed(3)
    image_model = MODELS.build(image_cfg)
    ckpt = tmp_path / 'image.pth'
    torch.save({'state_dict': image_model.state_dict(), 'meta': {}}, ckpt)
    cfg.load_from = str(ckpt)

    images, clips = cfg.train_dataloader.dataset.datasets
    images.update(data_root=f'{shapes_tiny}/', ann_file='annotations/captions_train.json',
                  data_prefix=dict(img_path='images/train/'))  # fmt: skip
    images.pipeline[1].scale = (64, 64)
    clips.update(data_root=f'{shapes_tiny}/', ann_file='msrvtt/train_val_videodatainfo.json')
    for step in clips.pipeline:
        if step['type'] == 'SampleFrames':
            step['num_frames'] = 32  # 16-frame clips: frames repeat, as for a short MSR-VTT clip
        if step['type'] == 'ResizeVideo':
            step['scale'] = (64, 64)
    cfg.train_dataloader.update(batch_size=8, num_workers=0, persistent_workers=False)
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=10)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.param_scheduler = None
    cfg.work_dir = str(tmp_path / 'joint')
    cfg.default_hooks.logger.interval = 1
    runner = build_runner(cfg)

    # Loading the image checkpoint initialises the tubes from its patch embedding (they are not in it).
    runner.load_or_resume()
    model = runner.model
    patch = image_model.image_encoder.patch_embed
    fresh = MODELS.build(dict(type='SparseTubeTokenizer', embed_dim=64, patch_size=16))
    fresh.inflate_patch_kernel(patch.weight, patch.bias)
    for ours, ref in zip(model.video_tokenizer.tubes, fresh.tubes, strict=True):
        torch.testing.assert_close(ours.weight, ref.weight)
    torch.testing.assert_close(model.image_encoder.patch_embed.weight, patch.weight)

    seen: list[int] = []
    forward = model.visual_tokens

    def record(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs.dim())
        return forward(inputs)

    model.visual_tokens = record
    runner.train()
    # 48 images (6 batches of 8) and 8 training clips (1 batch): each batch holds one modality.
    assert sorted(seen) == [4] * 6 + [5]
    state = safe_load(Path(cfg.work_dir) / 'epoch_1.pth')['state_dict']
    assert 'video_tokenizer.tubes.0.weight' in state and 'video_tokenizer.pos_gate' in state
