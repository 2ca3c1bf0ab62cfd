"""WebDataset shards: the writer's round trip, splitting over processes and workers, epoch shuffling, corrupt
samples (skipped and counted, or a typed error), MMEngine's dataloader builder and a short training run."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import mmcv
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pretrain.datasets.tar_shards import WebDatasetError, braceexpand, reader_shares, write_shard
from pretrain.datasets.webdataset import WebDataset
from toolkit.skips import read_ledger, set_ledger
from toolkit.testing.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / 'configs/mammut/mammut_vit-tiny-dec4_1xb32-30e_shapes-cap_wds.py'
PATTERN = 'shapes-train-{000000..000003}.tar'  # 48 tiny training images in 4 shards of 12


def _load_writer() -> ModuleType:
    return load_script(REPO / 'tools/data/make_webdataset.py')


@pytest.fixture(scope='module')
def shards(shapes_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('wds')
    summary = _load_writer().convert_captions(
        str(shapes_tiny / 'annotations/captions_train.json'),
        str(shapes_tiny / 'images/train'),
        str(out),
        prefix='shapes-train',
        num_shards=4,
    )
    assert summary['pattern'] == PATTERN and summary['samples'] == 48
    return out


def _ids(samples: Any) -> list[int]:
    return [sample['img_id'] for sample in samples]


def _all_ids(shapes_tiny: Path) -> list[int]:
    ann = json.loads((shapes_tiny / 'annotations/captions_train.json').read_text())
    return sorted(image['id'] for image in ann['images'])


def _dataset(root: Path, **kwargs: Any) -> WebDataset:
    return WebDataset(shards=PATTERN, data_root=str(root), **kwargs)


def test_braceexpand() -> None:
    assert braceexpand('a-{08..10}.tar') == ['a-08.tar', 'a-09.tar', 'a-10.tar']
    assert braceexpand('{x,y{1..2}}.tar') == ['x.tar', 'y1.tar', 'y2.tar']
    assert braceexpand('{x}-{3..1}') == ['{x}-3', '{x}-2', '{x}-1']
    assert reader_shares(10, 4) == [3, 3, 2, 2]


def test_writer_round_trip(shards: Path, shapes_tiny: Path) -> None:
    """Every image comes back once, decoded as LoadImageFromFile decodes the file, with all its captions."""
    assert json.loads((shards / 'sizes.json').read_text()) == {
        f'shapes-train-00000{i}.tar': 12 for i in range(4)
    }
    dataset = _dataset(shards, shuffle_shards=False)
    assert len(dataset) == 48
    records = list(dataset)
    assert sorted(_ids(records)) == _all_ids(shapes_tiny)
    ann = json.loads((shapes_tiny / 'annotations/captions_train.json').read_text())
    files = {image['id']: image['file_name'] for image in ann['images']}
    record = records[0]
    expected = mmcv.imread(str(shapes_tiny / 'images/train' / files[record['img_id']]))
    np.testing.assert_array_equal(record['img'], expected)
    assert record['img_shape'] == record['ori_shape'] == expected.shape[:2]
    captions = [a['caption'].strip() for a in ann['annotations'] if a['image_id'] == record['img_id']]
    assert record['captions'] == captions and len(captions) == 5


def test_streams_pipes_gzip_and_silent_truncation(shards: Path, tmp_path: Path) -> None:
    """pipe: commands and .tar.gz shards stream like files; a cut inside a tar header (which tarfile itself
    takes for the end of the archive) and a failing command are reported, not taken for a short shard."""
    import gzip

    from pretrain.datasets.tar_shards import iter_tar_groups

    shard = shards / 'shapes-train-000000.tar'
    expected = [g.key for g in iter_tar_groups(str(shard))]
    assert len(expected) == 12
    (tmp_path / 's.tar.gz').write_bytes(gzip.compress(shard.read_bytes()))
    for source in (f'pipe:cat {shard}', str(tmp_path / 's.tar.gz')):
        assert [g.key for g in iter_tar_groups(source)] == expected, source
    failed = list(iter_tar_groups('pipe:false'))
    assert isinstance(failed[-1], WebDatasetError) and 'exited with status 1' in str(failed[-1])
    header = _members(shard)[9]  # the image of the 4th sample
    (tmp_path / 'cut.tar').write_bytes(shard.read_bytes()[: header.offset + 100])
    *good, error = iter_tar_groups(str(tmp_path / 'cut.tar'))
    assert [g.key for g in good] == expected[
        :2
    ]  # the 3rd sample, still open when the stream ends, is dropped
    assert isinstance(error, WebDatasetError) and 'without an end-of-archive marker' in str(error)


def test_two_processes_two_workers_see_every_sample_once(shards: Path, shapes_tiny: Path) -> None:
    dataset = _dataset(shards, shuffle_buffer=4)
    orders = []
    for epoch in range(2):
        seen: list[int] = []
        for rank in range(2):
            per_rank = []
            for worker in range(2):
                ids = _ids(
                    dataset.iter_reader(epoch=epoch, rank=rank, world_size=2, worker=worker, num_workers=2)
                )
                assert len(ids) == 12  # each reader one shard
                per_rank += ids
            assert len(per_rank) == len(_dataset(shards, rank=rank, world_size=2)) == 24
            seen += per_rank
        assert sorted(seen) == _all_ids(shapes_tiny), f'epoch {epoch}: duplicates or missing samples'
        orders.append(seen)
    assert orders[0] != orders[1]


def test_real_workers_through_mmengine_builder(shards: Path, shapes_tiny: Path) -> None:
    """Runner.build_dataloader accepts sampler=None; worker processes split the shards and count epochs."""
    from mmengine.runner import Runner

    seen: dict[int, list[list[int]]] = {}
    for rank in range(2):
        loader = Runner.build_dataloader(
            dict(
                batch_size=4,
                num_workers=2,
                persistent_workers=True,
                sampler=None,
                dataset=dict(
                    type='WebDataset', shards=PATTERN, data_root=str(shards), rank=rank, world_size=2
                ),
            ),
            seed=0,
        )
        assert isinstance(loader, DataLoader) and len(loader) == 6
        seen[rank] = [[i for batch in loader for i in batch['img_id']] for _ in range(2)]  # two epochs
    for epoch in range(2):
        assert sorted(seen[0][epoch] + seen[1][epoch]) == _all_ids(shapes_tiny)
    assert seen[0][0] != seen[0][1], 'the second epoch repeated the first one'


def test_epoch_shuffle_is_deterministic(shards: Path) -> None:
    first, second = _dataset(shards, seed=3), _dataset(shards, seed=3)
    orders = [first.shard_order(epoch) for epoch in range(4)]
    assert orders == [second.shard_order(epoch) for epoch in range(4)]
    assert len({tuple(o) for o in orders}) > 1
    # In the main process each iter() is the next epoch; set_epoch picks one (what SetDatasetEpochHook does).
    epoch0, epoch1 = _ids(first), _ids(first)
    assert epoch0 == _ids(second.iter_reader(epoch=0, rank=0, world_size=1)) and epoch0 != epoch1
    second.set_epoch(1)
    assert _ids(second) == epoch1


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _rewrite(path: Path, edit: dict[str, bytes | None]) -> None:
    """Rewrite a shard with some members replaced (bytes) or removed (None)."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    samples: dict[str, dict[str, bytes]] = {}
    for name, data in members:
        key, ext = name.split('.', 1)
        new = edit.get(name, data)
        if new is not None:
            samples.setdefault(key, {})[ext] = new
    write_shard(str(path), samples.items())


@pytest.fixture
def corrupt(shards: Path, tmp_path: Path) -> dict[str, Any]:
    """A copy of the shards with a broken JPEG (shard 0), a missing caption (1), a caption that is not UTF-8
    (3) and shard 2 cut in the middle of its 7th image."""
    root = tmp_path / 'corrupt'
    shutil.copytree(shards, root)
    names = {i: [m.name for m in _members(root / f'shapes-train-00000{i}.tar')] for i in range(4)}
    bad_jpg, no_txt, bad_txt = names[0][3], names[1][4], names[3][7]
    assert bad_jpg.endswith('.jpg') and no_txt.endswith('.txt') and bad_txt.endswith('.txt')
    _rewrite(root / 'shapes-train-000000.tar', {bad_jpg: b'\xff\xd8 not a jpeg'})
    _rewrite(root / 'shapes-train-000001.tar', {no_txt: None})
    _rewrite(root / 'shapes-train-000003.tar', {bad_txt: b'caf\xe9 au lait'})
    cut_shard = root / 'shapes-train-000002.tar'
    image = _members(cut_shard)[18]  # the image of the 7th sample (3 members a sample)
    data = cut_shard.read_bytes()
    cut_shard.write_bytes(data[: image.offset_data + image.size // 2])

    def key_id(shard: int, member: str) -> int:
        with tarfile.open(shards / f'shapes-train-00000{shard}.tar') as tar:
            meta = tar.extractfile(member.split('.')[0] + '.json')  # type: ignore[union-attr]
            return int(json.load(io.TextIOWrapper(meta))['img_id'])  # type: ignore[arg-type]

    lost = {key_id(0, bad_jpg), key_id(1, no_txt), key_id(3, bad_txt)}
    lost |= {key_id(2, name) for name in names[2][18:]}  # the cut sample (7th of 12) and all after it
    members = dict(bad_jpg=bad_jpg, no_txt=no_txt, bad_txt=bad_txt, cut=image.name)
    return dict(root=root, lost=lost, members=members)


def test_corrupt_samples_are_skipped_and_counted(
    corrupt: dict[str, Any], shapes_tiny: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / 'ledger.jsonl'
    set_ledger(str(ledger))
    try:
        dataset = _dataset(corrupt['root'], on_error='skip', shuffle_buffer=8)
        ids = _ids(dataset)
    finally:
        set_ledger(None)
    expected = set(_all_ids(shapes_tiny)) - corrupt['lost']
    assert len(expected) == 48 - 9
    # Every readable sample comes through (the 6 before the cut too); the reader tops up to its share of 48
    # by reading its shards again, without counting the corrupt ones a second time.
    assert set(ids) == expected and len(ids) == len(dataset) == 48
    lines = read_ledger(str(ledger))
    assert len(lines) == 4 and {line['kind'] for line in lines} == {'webdataset'}
    reasons = '\n'.join(f'{line["source"]} {line["reason"]}' for line in lines)
    members = corrupt['members']
    for name, why in ((members['bad_jpg'], 'corrupt JPEG header'), (members['no_txt'], 'missing caption'),
                      (members['bad_txt'], 'UTF-8'), (members['cut'], 'unexpected end of data')):  # fmt: skip
        assert name in reasons and why in reasons, (name, reasons)
    assert 'shapes-train-000002.tar' in reasons


def test_sample_level_faults_are_named(tmp_path: Path) -> None:
    """Each kind of bad sample is skipped with its reason; images get LoadImageSafely's checks (a bomb is
    refused from its header, before decoding) and content, not the extension, decides the format."""
    from toolkit.testing.broken_image import huge_jpeg_header, truncated, valid_jpeg, valid_png

    good, caption = valid_jpeg(), b'a red circle'
    cases = {
        'good': {'jpg': good, 'txt': caption},
        'png_named_jpg': {'jpg': valid_png(), 'txt': caption},
        'bomb': {'jpg': huge_jpeg_header(good), 'txt': caption},
        'cut_jpeg': {'jpg': truncated(good), 'txt': caption},
        'not_image': {'jpg': b'hello', 'txt': caption},
        'no_image': {'txt': caption},
        'empty_caption': {'jpg': good, 'txt': b'  '},
        'bad_json': {'jpg': good, 'txt': caption, 'json': b'{"img_id": '},
    }
    reasons = {
        'bomb': 'exceeds max_pixels',
        'cut_jpeg': 'truncated JPEG',
        'not_image': 'not an image',
        'no_image': 'no image member',
        'empty_caption': 'empty caption',
        'bad_json': 'not valid UTF-8 JSON',
    }
    keys = {name: f'{i:06d}' for i, name in enumerate(cases)}
    write_shard(str(tmp_path / 'faults.tar'), [(keys[name], members) for name, members in cases.items()])
    set_ledger(str(tmp_path / 'ledger.jsonl'))
    try:
        ids = _ids(WebDataset(shards='faults.tar', data_root=str(tmp_path)))
    finally:
        set_ledger(None)
    assert ids == [int(keys['good']), int(keys['png_named_jpg'])]
    lines = {
        line['source'].rsplit(':', 1)[1]: line['reason']
        for line in read_ledger(str(tmp_path / 'ledger.jsonl'))
    }
    assert lines.keys() == {keys[name] for name in reasons}
    for name, why in reasons.items():
        assert why in lines[keys[name]], (name, lines[keys[name]])


@pytest.mark.parametrize('which', ['bad_jpg', 'no_txt', 'bad_txt', 'cut'])
def test_corrupt_samples_raise_a_typed_error(corrupt: dict[str, Any], which: str) -> None:
    member = corrupt['members'][which]
    shard = {'bad_jpg': 0, 'no_txt': 1, 'bad_txt': 3, 'cut': 2}[which]
    dataset = WebDataset(
        shards=f'shapes-train-00000{shard}.tar', data_root=str(corrupt['root']), on_error='raise'
    )
    before: list[int] = []
    with pytest.raises(WebDatasetError, match=rf'shapes-train-00000{shard}\.tar: {member}') as info:
        for record in dataset:
            before.append(record['img_id'])
    assert info.value.shard.endswith(f'shapes-train-00000{shard}.tar') and info.value.member == member
    if which == 'cut':
        assert len(before) == 6  # the samples before the truncation came through first


def test_worker_reraises_the_typed_error(corrupt: dict[str, Any]) -> None:
    dataset = WebDataset(shards='shapes-train-000000.tar', data_root=str(corrupt['root']), on_error='raise')
    with pytest.raises(WebDatasetError, match=corrupt['members']['bad_jpg']):
        list(DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=list))


def test_uneven_shards(shards: Path, shapes_tiny: Path) -> None:
    three = 'shapes-train-{000000..000002}.tar'  # 36 samples for 4 readers
    with pytest.raises(ValueError, match="3 shard.*4 readers.*split_by='sample'"):
        list(
            WebDataset(shards=three, data_root=str(shards)).iter_reader(
                epoch=0, rank=0, world_size=2, num_workers=2
            )
        )
    # Every reader reads every shard and keeps every 4th sample: exactly once, equal shares.
    dataset = WebDataset(shards=three, data_root=str(shards), split_by='sample')
    readers = [
        _ids(dataset.iter_reader(epoch=0, rank=r, world_size=2, worker=w, num_workers=2))
        for r in range(2)
        for w in range(2)
    ]
    assert [len(ids) for ids in readers] == [9] * 4 and len(set(sum(readers, []))) == 36
    # Five shards of 12 over 2 x 2 readers (one reader gets two): every rank still yields ceil(60 / 2) = 30 so
    # that DDP ranks step together; each reader stops at, or tops up to, its equal share of 15.
    five = [PATTERN, 'shapes-train-000000.tar']
    dataset = WebDataset(shards=five, data_root=str(shards))
    counts = [
        len(_ids(dataset.iter_reader(epoch=1, rank=r, world_size=2, worker=w, num_workers=2)))
        for r in range(2)
        for w in range(2)
    ]
    assert len(dataset) == 60 and counts == [15] * 4


def test_config_swaps_the_training_set() -> None:
    from mmengine.config import Config

    cfg = Config.fromfile(str(CONFIG))
    assert cfg.train_dataloader.sampler is None
    assert (
        cfg.train_dataloader.dataset.type == 'WebDataset' and 'ann_file' not in cfg.train_dataloader.dataset
    )
    assert cfg.val_dataloader.dataset.type == 'ImageCaptionDataset'
    assert any(hook['type'] == 'SetDatasetEpochHook' for hook in cfg.custom_hooks)


def test_train_two_iterations(shards: Path, tmp_path: Path) -> None:
    """tools/train.py's path (load_config, build_runner) trains the wds config for one 2-iteration epoch."""
    from toolkit.engine import build_runner, load_config

    options = {
        'train_dataloader.dataset.data_root': str(shards),
        'train_dataloader.dataset.shards': PATTERN,
        'train_dataloader.batch_size': 24,  # 48 samples: 2 iterations
        'train_cfg.max_epochs': 1,
    }
    cfg = load_config(str(CONFIG), work_dir=str(tmp_path / 'work'), cfg_options=options)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    torch.manual_seed(0)
    runner = build_runner(cfg)
    runner.train()
    assert runner.iter == 2 and runner.epoch == 1
    assert any(type(hook).__name__ == 'SetDatasetEpochHook' for hook in runner.hooks)
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert np.isfinite(loss)
    assert not read_ledger(str(tmp_path / 'work' / 'skipped_samples.jsonl'))
    assert Counter(p.suffix for p in (tmp_path / 'work').iterdir())['.pth'] >= 1
