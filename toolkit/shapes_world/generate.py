"""Generate a Shapes World data set directory (images, videos, COCO/LVIS/MSRVTT annotations, tokenizer).

Determinism: every image and video draws from its own ``numpy.random.Generator`` seeded with
``(seed, split code, index, purpose)``, and category assignment is planned in the parent process, so the
annotation JSON is byte-identical for a seed whatever the number of worker processes.

Category frequencies (documented for the LVIS r/c/f groups): training images draw their categories
(without replacement within an image) with probability ``p(rank) ~ exp(-0.092 * rank)`` over a fixed rank
order of the 48 categories: a long, Zipf-like tail with a bounded head (the most frequent category is ~75x
more likely than the rarest). The rank order is a permutation drawn once with seed 48, independent of the
run seed, so the same categories are frequent or rare in every generation; the novel categories sit at ranks
2, 18, 20, 28, 30, 41, 46 and 47 (0 = most frequent). At ``small`` size (1600 training images) this gives
about 8-12 rare (<= 10 images), 23-27 common and 12-14 frequent (> 100 images) categories; at ``full`` size
there are no rare ones left. Validation and test images follow the same distribution, as LVIS and COCO
val follow their train split, except that one shuffled deck of all 48 categories is dealt first, so every
category appears in each of these splits (given at least 12 images) and per-category AP is defined.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from toolkit.shapes_world.captions import ACTIONS, image_captions, video_captions, video_questions, vocabulary
from toolkit.shapes_world.formats import (
    build_tokenizer,
    coco_captions,
    coco_instances,
    lvis_instances,
    ov_split,
    write_json,
)
from toolkit.shapes_world.scene import (
    CATEGORIES,
    category_id,
    layout_objects,
    polygon_area,
    render_background,
    render_shapes,
)
from toolkit.shapes_world.video import encode_mp4, render_video_frames, sample_video

__all__ = ['SIZES', 'VERSION', 'category_weights', 'generate_shapes_world', 'render_samples']

VERSION = '1.3'  # 1.1: val/test follow the training category distribution; 1.2: 2,000 small videos;
# 1.3: turns of 25-40 degrees (the sense visible between any two frames)
# (train, val, test) images and the number of videos of each size.
SIZES: dict[str, tuple[int, int, int, int]] = {
    'tiny': (48, 16, 16, 12),
    'small': (1600, 200, 200, 2000),  # 1,400 / 200 / 400 videos: enough to learn motion words
    'full': (16000, 2000, 2000, 20000),
}
SPLITS = ('train', 'val', 'test')
_SPLIT_CODE = {'train': 0, 'val': 1, 'test': 2, 'video': 3}
_NUM_OBJECTS_P = (0.2, 0.3, 0.3, 0.2)  # P(1..4 objects per image)
_REPEAT_P = 0.3  # probability that an image with >= 2 objects repeats a category
_PARTITIONS = {2: ((2,),), 3: ((2, 1), (3,)), 4: ((2, 1, 1), (2, 2), (3, 1))}
_DECAY, _RANK_SEED = 0.092, 48  # top/bottom category weight ratio exp(0.092 * 47) ~ 75
_VIDEO_SPLIT_FRACTIONS = (0.7, 0.1)  # train, validate; the rest is test (MSRVTT 9k/1k style)


def category_weights() -> np.ndarray:
    """Training sampling probability (48,) of each category, in category-id order."""
    rank = np.random.default_rng(_RANK_SEED).permutation(len(CATEGORIES))
    w = np.exp(-_DECAY * rank)
    return w / w.sum()


def _group_sizes(rng: np.random.Generator) -> tuple[int, ...]:
    n = 1 + int(rng.choice(4, p=_NUM_OBJECTS_P))
    if n >= 2 and rng.random() < _REPEAT_P:
        options = _PARTITIONS[n]
        return options[int(rng.integers(len(options)))]
    return (1,) * n


def _plan_split(seed: int, split: str, num: int) -> list[list[tuple[int, int]]]:
    """Per image, the (category index, count) groups; see the module docstring for the sampling."""
    code = _SPLIT_CODE[split]
    sizes = [list(_group_sizes(np.random.default_rng([seed, code, i, 0]))) for i in range(num)]
    num_cats = len(CATEGORIES)
    if split == 'train':
        weights = category_weights()
        return [
            list(
                zip(
                    (
                        int(c)
                        for c in np.random.default_rng([seed, code, i, 1]).choice(
                            num_cats, size=len(s), replace=False, p=weights
                        )
                    ),
                    s,
                    strict=True,
                )
            )
            for i, s in enumerate(sizes)
        ]
    # Eval splits follow the training distribution, as LVIS/COCO val follow train, after one shuffled deck
    # of all 48 categories (so every category is present and per-category AP is defined).
    i = 0
    while sum(len(s) for s in sizes) < num_cats and any(sum(s) < 4 for s in sizes):
        if sum(sizes[i % num]) < 4:
            sizes[i % num].append(1)
        i += 1
    rng = np.random.default_rng([seed, code, 1 << 20])
    weights = category_weights()
    deck = [int(c) for c in rng.permutation(num_cats)]
    plans = []
    for s in sizes:
        cats: list[int] = []
        while len(cats) < len(s):
            pos = next((j for j, c in enumerate(deck) if c not in cats), None)
            if pos is not None:
                cats.append(deck.pop(pos))
                continue
            p = weights.copy()
            p[cats] = 0.0
            cats.append(int(rng.choice(num_cats, p=p / p.sum())))
        plans.append(list(zip(cats, s, strict=True)))
    return plans


def _render_image(item: dict[str, Any]) -> dict[str, Any]:
    """Worker: draw, save and describe one image."""
    rng = np.random.default_rng([item['seed'], _SPLIT_CODE[item['split']], item['index'], 2])
    width, height = item['width'], item['height']
    objects = [CATEGORIES[c] for c, count in item['groups'] for _ in range(count)]
    objects = [objects[int(j)] for j in rng.permutation(len(objects))]
    img_bg, kind = render_background(rng, width, height)
    shapes = layout_objects(rng, objects, width, height)
    Image.fromarray(render_shapes(img_bg, shapes)).save(item['path'], format='JPEG', quality=90)
    anns = []
    for inst in shapes:
        poly = np.round(inst.polygon(), 2)
        x0, y0 = poly.min(axis=0)
        x1, y1 = poly.max(axis=0)
        bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        anns.append(
            {
                'category_id': category_id(inst.colour, inst.shape),
                'bbox': [round(v, 2) for v in bbox],
                'area': round(polygon_area(poly), 2),
                'segmentation': [[float(v) for v in poly.reshape(-1)]],
            }
        )
    return {'anns': anns, 'captions': image_captions(rng, shapes, kind, width, height)}


def _render_video(item: dict[str, Any]) -> dict[str, Any]:
    """Worker: draw, encode and describe one video."""
    rng = np.random.default_rng([item['seed'], _SPLIT_CODE['video'], item['index']])
    spec = sample_video(rng, size=item['size'], frames=item['frames'])
    vid_frames = render_video_frames(spec, size=item['size'], frames=item['frames'])
    encode_mp4(item['path'], vid_frames, fps=item['fps'])
    if item.get('poster'):
        Image.fromarray(vid_frames[0]).save(item['poster'])
    distractor = None if spec.distractor is None else (spec.distractor.colour, spec.distractor.shape)
    return {
        'action': spec.action,
        'colour': spec.colour,
        'shape': spec.shape,
        'detail': spec.detail,
        'distractor': distractor,
        'captions': video_captions(
            rng,
            action=spec.action,
            colour=spec.colour,
            shape=spec.shape,
            detail=spec.detail,
            distractor=distractor,
        ),
        'qa': video_questions(
            action=spec.action,
            colour=spec.colour,
            shape=spec.shape,
            detail=spec.detail,
            num_shapes=1 if distractor is None else 2,
        ),
    }


def _run(
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    items: Sequence[dict[str, Any]],
    pool: Any,
    desc: str,
    progress: bool,
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    it: Iterator[dict[str, Any]]
    if pool is None:
        it = map(fn, items)
    else:
        it = pool.imap(fn, items, chunksize=max(1, min(16, len(items) // 32)))  # ordered results
    return list(tqdm(it, total=len(items), desc=desc, file=sys.stderr, disable=not progress, leave=False))


def _clean(out_dir: str) -> None:
    """Remove the marker first, then only the outputs this generator writes."""
    marker = os.path.join(out_dir, '.complete')
    if os.path.exists(marker):
        os.remove(marker)
    for name in ('images', 'videos', 'annotations', 'msrvtt'):
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    if os.path.exists(os.path.join(out_dir, 'tokenizer.json')):
        os.remove(os.path.join(out_dir, 'tokenizer.json'))


def generate_shapes_world(
    out_dir: str,
    *,
    seed: int = 0,
    size: str = 'tiny',
    workers: int = 1,
    image_size: int = 128,
    video_frames: int = 16,
    video_size: int = 64,
    fps: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a Shapes World data set to ``out_dir`` (layout in ``toolkit/shapes_world/__init__.py``).

    Args:
        out_dir: output directory; its ``images``, ``videos``, ``annotations``, ``msrvtt`` folders,
            ``tokenizer.json`` and ``.complete`` are replaced, nothing else is touched.
        seed: run seed; the same seed gives byte-identical JSON and identical images.
        size: ``tiny`` (48/16/16 images, 12 videos), ``small`` (1600/200/200, 2000) or ``full`` (10x small).
        workers: processes used to render (1: in this process).
        image_size: image side in pixels.
        video_frames, video_size, fps: frames per video, frame side (even) and frame rate.
        progress: show tqdm progress bars on stderr.

    Returns:
        A summary: ``images``/``instances``/``videos``/``qa`` counts per split, the LVIS frequency histogram,
        ``paths`` of the files written and ``elapsed_s``.
    """
    if size not in SIZES:
        raise ValueError(f'size must be one of {list(SIZES)}, got {size!r}')
    if video_size % 2 or video_size < 16 or image_size < 32 or video_frames < 2:
        raise ValueError('need an even video_size >= 16, image_size >= 32 and video_frames >= 2')
    start_time = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    _clean(out_dir)
    ann_dir, msr_dir, vid_dir = (os.path.join(out_dir, d) for d in ('annotations', 'msrvtt', 'videos'))
    for d in (ann_dir, msr_dir, vid_dir, *(os.path.join(out_dir, 'images', s) for s in SPLITS)):
        os.makedirs(d, exist_ok=True)
    info = {
        'description': 'Shapes World: synthetic COCO/LVIS/MSRVTT-format data of VL-Toolkit',
        'version': VERSION,
        'contributor': 'toolkit.shapes_world',
        'url': '',
        'date_created': '',
        'seed': seed,
        'size': size,
    }
    n_train, n_val, n_test, n_videos = SIZES[size]
    pool = multiprocessing.get_context('spawn').Pool(workers) if workers > 1 else None
    try:
        images: dict[str, list[dict[str, Any]]] = {}
        results: dict[str, list[dict[str, Any]]] = {}
        next_id = 1
        for split, num in zip(SPLITS, (n_train, n_val, n_test), strict=True):
            plans = _plan_split(seed, split, num)
            images[split] = [
                {
                    'id': next_id + i,
                    'file_name': f'{next_id + i:012d}.jpg',
                    'width': image_size,
                    'height': image_size,
                }
                for i in range(num)
            ]
            items = [
                {
                    'seed': seed,
                    'split': split,
                    'index': i,
                    'groups': plans[i],
                    'width': image_size,
                    'height': image_size,
                    'path': os.path.join(out_dir, 'images', split, img['file_name']),
                }
                for i, img in enumerate(images[split])
            ]
            results[split] = _run(_render_image, items, pool, f'images/{split}', progress)
            next_id += num
        n_tr = round(_VIDEO_SPLIT_FRACTIONS[0] * n_videos)
        n_va = round(_VIDEO_SPLIT_FRACTIONS[1] * n_videos)
        v_items = [
            {
                'seed': seed,
                'index': i,
                'size': video_size,
                'frames': video_frames,
                'fps': fps,
                'path': os.path.join(vid_dir, f'video{i}.mp4'),
            }
            for i in range(n_videos)
        ]
        videos = _run(_render_video, v_items, pool, 'videos', progress)
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    paths: dict[str, str] = {}

    def dump(rel: str, obj: Any) -> None:
        paths[rel] = os.path.join(out_dir, rel)
        write_json(paths[rel], obj)

    anns: dict[str, list[dict[str, Any]]] = {}
    ann_id = cap_id = 1
    for split in SPLITS:
        anns[split], caps = [], []
        for img, res in zip(images[split], results[split], strict=True):
            for a in res['anns']:
                anns[split].append({'id': ann_id, 'image_id': img['id'], **a, 'iscrowd': 0})
                ann_id += 1
            for text in res['captions']:
                caps.append({'id': cap_id, 'image_id': img['id'], 'caption': text})
                cap_id += 1
        dump(f'annotations/captions_{split}.json', coco_captions(info, images[split], caps))
        dump(f'annotations/instances_{split}.json', coco_instances(info, images[split], anns[split]))
    split_def = ov_split()
    dump(
        'annotations/instances_train_base.json',
        coco_instances(info, images['train'], anns['train'], drop_category_ids=split_def['novel_ids']),
    )
    dump('annotations/ov_split.json', split_def)
    lvis_train = lvis_instances(info, 'train', images['train'], anns['train'], anns['train'])
    dump('annotations/lvis_v1_train.json', lvis_train)
    lvis_val = lvis_instances(info, 'val', images['val'], anns['val'], anns['train'])
    dump('annotations/lvis_v1_val.json', lvis_val)

    # MSRVTT: video0.. train, then validate, then test; sentence and question ids run over all videos.
    v_split = ['train'] * n_tr + ['validate'] * n_va + ['test'] * (n_videos - n_tr - n_va)
    msr: dict[str, dict[str, list[dict[str, Any]]]] = {
        'trainval': {'videos': [], 'sentences': []},
        'test': {'videos': [], 'sentences': []},
    }
    qa: dict[str, list[dict[str, Any]]] = {'train': [], 'validate': [], 'test': []}
    sen_id = q_id = 0
    for i, (res, split) in enumerate(zip(videos, v_split, strict=True)):
        part = msr['test' if split == 'test' else 'trainval']
        part['videos'].append(
            {
                'category': ACTIONS.index(res['action']),
                'url': '',
                'video_id': f'video{i}',
                'start time': 0.0,
                'end time': round(video_frames / fps, 3),
                'split': split,
                'id': i,
            }
        )
        for text in res['captions']:
            part['sentences'].append({'caption': text, 'video_id': f'video{i}', 'sen_id': sen_id})
            sen_id += 1
        for question, answer, qtype in res['qa']:
            qa[split].append(
                {'answer': answer, 'id': q_id, 'question': question, 'video_id': i, 'category_id': qtype}
            )
            q_id += 1
    dump('msrvtt/train_val_videodatainfo.json', {'info': info, **msr['trainval']})
    dump('msrvtt/test_videodatainfo.json', {'info': info, **msr['test']})
    for split, name in (('train', 'train'), ('validate', 'val'), ('test', 'test')):
        dump(f'msrvtt/{name}_qa.json', qa[split])

    tokenizer = build_tokenizer(vocabulary())
    texts = [r for s in SPLITS for res in results[s] for r in res['captions']]
    texts += [t for res in videos for t in res['captions']]
    texts += [t for res in videos for q in res['qa'] for t in q[:2]]
    unk = tokenizer.token_to_id('<unk>')
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    missing = sorted({t for t, enc in zip(texts, encoded, strict=True) if unk in enc.ids})
    if missing:
        raise RuntimeError(f'texts with words missing from captions.vocabulary(): {missing[:5]}')
    paths['tokenizer.json'] = os.path.join(out_dir, 'tokenizer.json')
    tokenizer.save(paths['tokenizer.json'])

    freq = [c['frequency'] for c in lvis_train['categories']]
    summary = {
        'out_dir': out_dir,
        'seed': seed,
        'size': size,
        'version': VERSION,
        'images': {s: len(images[s]) for s in SPLITS},
        'instances': {s: len(anns[s]) for s in SPLITS},
        'videos': {s: v_split.count(s) for s in ('train', 'validate', 'test')},
        'qa': {s: len(qa[s]) for s in qa},
        'lvis_frequency': {f: freq.count(f) for f in 'rcf'},
        'paths': paths,
        'elapsed_s': round(time.perf_counter() - start_time, 2),
    }
    write_json(os.path.join(out_dir, '.complete'), {'seed': seed, 'size': size, 'version': VERSION})
    return summary


def render_samples(
    out_dir: str,
    *,
    seed: int = 0,
    images: int = 6,
    videos: int = 4,
    image_size: int = 128,
    video_frames: int = 16,
    video_size: int = 64,
    fps: int = 8,
) -> dict[str, list[dict[str, Any]]]:
    """A few Shapes World images and videos for demos: a test split of ``images`` images and the first
    ``videos`` videos of a data set of this seed (the same files as the data set's when the counts agree).

    Writes ``out_dir/image{i}.jpg`` and ``out_dir/video{i}.mp4`` (and ``video{i}.png``, its first frame);
    returns ``{'images': [{'file', 'names', 'captions'}], 'videos': [{'file', 'poster', 'captions',
    'questions'}]}`` with absolute paths, the category names in each image (sorted, once each) and the
    questions of each video as ``(question, answer)`` pairs.
    """
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    image_items = []
    for index, groups in enumerate(_plan_split(seed, 'test', images) if images else []):
        item = {'seed': seed, 'split': 'test', 'index': index, 'groups': groups, 'width': image_size,
                'height': image_size, 'path': os.path.join(out_dir, f'image{index}.jpg')}  # fmt: skip
        result = _render_image(item)
        names = sorted({CATEGORIES[c][0] + ' ' + CATEGORIES[c][1] for c, _ in groups})
        image_items.append({'file': item['path'], 'names': names, 'captions': result['captions']})
    video_items = []
    for index in range(videos):
        path, poster = (os.path.join(out_dir, f'video{index}.{ext}') for ext in ('mp4', 'png'))
        item = {'seed': seed, 'index': index, 'size': video_size, 'frames': video_frames, 'fps': fps}
        result = _render_video({**item, 'path': path, 'poster': poster})
        video_items.append(
            {
                'file': path,
                'poster': poster,
                'captions': result['captions'],
                'questions': [(question, answer) for question, answer, _ in result['qa']],
            }
        )
    return {'images': image_items, 'videos': video_items}
