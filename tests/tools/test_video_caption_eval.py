"""tools/video_caption_eval.py end to end on Shapes World tiny, its scores checked against pycocoevalcap."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import pytest
import torch

from toolkit.engine import load_config
from toolkit.registry import MODELS
from toolkit.testing.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
IMAGE_CONFIG = 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap.py'

needs_java = pytest.mark.skipif(shutil.which('java') is None, reason='pycocoevalcap needs a Java runtime')


def _load_tool() -> ModuleType:
    return load_script(REPO / 'tools' / 'video_caption_eval.py')


def _test_options(root: Path) -> list[str]:
    """Point every split at ``root`` and keep the test loader in-process."""
    return [
        *(f'{split}_dataloader.dataset.data_root={root}/' for split in ('train', 'val', 'test')),
        'test_dataloader.batch_size=16',
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False',
    ]


def _random_checkpoint(config: str, path: Path) -> Path:
    """A random-init checkpoint of the config's model, in the form the Runner loads (``state_dict``)."""
    torch.manual_seed(0)
    model = MODELS.build(load_config(str(REPO / config)).model)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def _coco_refs(ann_file: Path) -> dict[int, list[str]]:
    refs: dict[int, list[str]] = defaultdict(list)
    for record in json.loads(ann_file.read_text())['annotations']:
        refs[int(record['image_id'])].append(record['caption'])
    return dict(refs)


def _direct_pycocoevalcap(
    preds: dict[int, str], refs: dict[int, list[str]], constant: str
) -> dict[str, float]:
    """The COCO caption server's scores with pycocoevalcap alone, and the CIDEr of the constant caption."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{'caption': c} for c in refs[k]] for k in preds})
    res = tokenizer.tokenize({**{k: [{'caption': c}] for k, c in preds.items()}, -1: [{'caption': constant}]})
    constant_tokens = res.pop(-1)[0]
    const = {k: [constant_tokens] for k in preds}
    meteor = Meteor()
    scores = {
        'BLEU-4': Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        'METEOR': meteor.compute_score(gts, res)[0],
        'ROUGE-L': Rouge().compute_score(gts, res)[0],
        'CIDEr': Cider().compute_score(gts, res)[0],
        'constant CIDEr': Cider().compute_score(gts, const)[0],
    }
    del meteor
    return {k: float(v) for k, v in scores.items()}


def _printed(out: str, row: str) -> float:
    match = re.search(rf'^{re.escape(row)}\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)$', out, flags=re.MULTILINE)
    assert match, f'row {row!r} missing from the printed table:\n{out}'
    return float(match.group(1))


@needs_java
@pytest.mark.slow
def test_caption_eval_image_config(
    shapes_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _load_tool()
    options = _test_options(shapes_tiny)
    checkpoint = _random_checkpoint(IMAGE_CONFIG, tmp_path / 'random.pth')
    work = tmp_path / 'eval'
    argv = [IMAGE_CONFIG, str(checkpoint), '--work-dir', str(work), '--beam-size', '2', '--max-len', '8',
            '--num-show', '3', '--cfg-options', *options]  # fmt: skip
    assert tool.main(argv) == 0
    out = capsys.readouterr().out

    pred_path, metrics_path = work / 'predictions_test.json', work / 'metrics.json'
    assert f'predictions: {pred_path}' in out and f'metrics:     {metrics_path}' in out
    predictions = json.loads(pred_path.read_text())
    refs = _coco_refs(shapes_tiny / 'annotations' / 'captions_test.json')
    assert sorted(p['image_id'] for p in predictions) == sorted(refs)
    assert all(set(p) == {'image_id', 'caption'} and isinstance(p['caption'], str) for p in predictions)
    assert 'beam 2, max_len 8' in out
    assert all(len(p['caption'].split()) <= 8 for p in predictions)

    # Shown predictions: three, each with its first two references.
    assert out.count(' prediction: ') == 3 and out.count(' reference:  ') == 6
    first = predictions[0]
    assert f'{first["image_id"]}  prediction: {first["caption"]}' in out
    assert f'reference:  {refs[first["image_id"]][0].strip()}' in out

    metrics = json.loads(metrics_path.read_text())
    constant = re.search(r'^best constant caption: "(.*)"$', out, flags=re.MULTILINE)
    assert constant and metrics['constant_caption/caption'] == constant.group(1)
    direct = _direct_pycocoevalcap(
        {p['image_id']: p['caption'] for p in predictions}, refs, constant.group(1)
    )
    for name in ('BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr'):
        assert metrics[f'caption/{name}'] == pytest.approx(direct[name], abs=1e-6), name
        assert _printed(out, name) == pytest.approx(direct[name], abs=1e-6), name
    row = 'CIDEr of the best constant caption'
    assert metrics['constant_caption/CIDEr'] == pytest.approx(direct['constant CIDEr'], abs=1e-6)
    assert _printed(out, row) == pytest.approx(direct['constant CIDEr'], abs=1e-6)
    assert direct['constant CIDEr'] > 0


def test_caption_eval_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    tool = _load_tool()
    with pytest.raises(FileNotFoundError, match='nothing.pth does not exist'):
        tool.main([IMAGE_CONFIG, str(tmp_path / 'nothing.pth'), '--work-dir', str(tmp_path)])
    with pytest.raises(SystemExit):
        tool.main([IMAGE_CONFIG, str(tmp_path / 'x.pth'), '--beam-size', '0'])


def test_caption_eval_config_forces_beam_search(tmp_path: Path) -> None:
    tool = _load_tool()
    checkpoint = tmp_path / 'c.pth'
    checkpoint.write_bytes(b'')
    args = tool.parse_args([IMAGE_CONFIG, str(checkpoint), '--work-dir', str(tmp_path), '--cfg-options',
                            'model.generation.method=greedy', 'model.generation.min_len=2'])  # fmt: skip
    cfg, pred_path = tool.prepare_config(args)
    # The flags win over --cfg-options; the config's max_len and other keys stay.
    assert cfg.model.generation == dict(method='beam', beam_size=3, max_len=32, min_len=2)
    assert cfg.load_from is None  # main() loads it strictly, as toolkit.apis.init_model does
    assert pred_path == str(tmp_path / 'predictions_test.json')
    assert cfg.test_evaluator == [dict(
        type='CaptionMetric', metrics=['BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr'], prefix='caption',
        save_path=pred_path,
    )]  # fmt: skip
    args = tool.parse_args([IMAGE_CONFIG, str(checkpoint), '--max-len', '5', '--beam-size', '4', '--out',
                            str(tmp_path / 'p.json')])  # fmt: skip
    cfg, pred_path = tool.prepare_config(args)
    assert cfg.model.generation == dict(method='beam', beam_size=4, max_len=5)
    assert pred_path == str(tmp_path / 'p.json')
