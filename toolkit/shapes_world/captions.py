"""Shapes World texts: image captions, video captions and MSRVTT-QA style questions.

Captions are short (at most :data:`MAX_WORDS` words), lower case and learnable: every image caption names
the colour and shape of every object (duplicates as counts, "two red circles"), and the templates add
counts, the background texture and spatial relations ("a red circle to the left of a blue square") that
are read off the rendered geometry. Video captions describe the single action of the acting shape.

Every word any template can produce is listed by :func:`vocabulary`, so the word-level tokenizer is the
same for every seed and size; the generator checks each text against it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from toolkit.shapes_world.scene import BACKGROUNDS, COLOURS, SHAPES, ShapeInstance

__all__ = [
    'ACTIONS',
    'ACTION_VERBS',
    'MAX_WORDS',
    'image_captions',
    'noun_phrase',
    'plural',
    'video_captions',
    'video_questions',
    'vocabulary',
]

MAX_WORDS = 20
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six')
BACKGROUND_WORDS = {'noise': 'noisy', 'stripes': 'striped', 'checker': 'checkered', 'gradient': 'gradient'}
# Answer of "what does the <shape> do?" for each action; the action index is the MSRVTT video category.
ACTIONS: tuple[str, ...] = ('move', 'turn', 'grow', 'shrink', 'change')
ACTION_VERBS = {'move': 'moves', 'turn': 'turns', 'grow': 'grows', 'shrink': 'shrinks', 'change': 'changes'}
DIRECTIONS = ('left', 'right', 'up', 'down')
TURNS = ('clockwise', 'counterclockwise')

_LIST_TEMPLATES = (
    'there {be} {objs}',
    'an image of {objs}',
    'a picture showing {objs}',
    '{objs}',
    'this image shows {objs}',
    'a photo with {objs}',
)
_BG_TEMPLATES = (
    '{objs} on a {bg} background',
    'a {bg} background with {objs}',
    '{objs} in front of a {bg} background',
)
_COUNT_TEMPLATES = (
    '{n} {shapes}: {objs}',
    'the image contains {n} {shapes}: {objs}',
    '{objs}, {n} {shapes} in total',
)
_REL_PHRASES = {
    'left': ('to the left of', 'left of'),
    'right': ('to the right of', 'right of'),
    'above': ('above', 'over'),
    'below': ('below', 'under'),
}
_REL_TEMPLATES = ('{s} {rel} {o}', '{s} {be} {rel} {o}')
_REST_TEMPLATES = ('{pair}, and {rest}', '{pair}, with {rest}', '{pair}. there is also {rest}')
_POSITION_PHRASES = {
    ('top', 'left'): 'in the top left corner',
    ('top', 'center'): 'at the top',
    ('top', 'right'): 'in the top right corner',
    ('middle', 'left'): 'on the left',
    ('middle', 'center'): 'in the center',
    ('middle', 'right'): 'on the right',
    ('bottom', 'left'): 'in the bottom left corner',
    ('bottom', 'center'): 'at the bottom',
    ('bottom', 'right'): 'in the bottom right corner',
}
_POSITION_TEMPLATES = ('{obj} {pos}', 'there is {obj} {pos}', 'a {bg} background with {obj} {pos}')

_MOVE_PHRASES = {
    'left': ('to the left', 'left'),
    'right': ('to the right', 'right'),
    'up': ('up', 'upward'),
    'down': ('down', 'downward'),
}
_VIDEO_TEMPLATES = {
    'move': (
        '{a} moves {dir}',
        '{a} slides {dir}',
        'the {cs} travels {dir}',
        '{a} is moving {dir}',
        '{ac} shape moves {dir}',
        'the {cs} goes {dir}',
    ),
    'turn': (
        '{a} turns {dir}',
        '{a} rotates {dir}',
        'the {cs} spins {dir}',
        '{a} is rotating {dir}',
        '{ac} shape turns {dir}',
        'the {cs} is turning {dir}',
    ),
    'grow': (
        '{a} grows',
        '{a} gets bigger',
        'the {cs} grows larger',
        '{a} is growing',
        '{a} expands',
        '{ac} shape gets bigger',
    ),
    'shrink': (
        '{a} shrinks',
        '{a} gets smaller',
        'the {cs} shrinks in size',
        '{a} is shrinking',
        '{ac} shape gets smaller',
        'the {cs} becomes smaller',
    ),
    'change': (
        '{a} turns {c2}',
        '{a} changes colour to {c2}',
        'a {s} changes from {c} to {c2}',
        'the {cs} becomes {c2}',
        '{a} changes colour',
        'the {s} switches from {c} to {c2}',
    ),
}
_DISTRACTOR_TEMPLATES = (
    '{main} while {b} stays still',
    '{main} next to {b}',
    '{main}, and {b} does not move',
)
_QUESTION_TYPE = {'what': 0, 'how': 2}  # MSRVTT-QA category_id: 0 what, 1 who, 2 how, 3 when, 4 where


def plural(shape: str) -> str:
    """Plural of a shape name."""
    return shape + ('es' if shape.endswith(('s', 'x', 'sh', 'ch')) else 's')


def _article(word: str) -> str:
    return 'an' if word[0] in 'aeiou' else 'a'


def noun_phrase(colour: str, shape: str, count: int = 1) -> str:
    """``'a red circle'``, ``'an orange star'`` or ``'two red circles'``."""
    if count == 1:
        return f'{_article(colour)} {colour} {shape}'
    return f'{NUMBER_WORDS[count]} {colour} {plural(shape)}'


def _join(phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ', '.join(phrases[:-1]) + ' and ' + phrases[-1]


def _words(text: str) -> int:
    return len(re.findall(r'[a-z]+', text))


def _relation(
    src: Sequence[ShapeInstance], dst: Sequence[ShapeInstance], width: int, height: int
) -> str | None:
    """The clear relation "src REL dst" that holds for every pair of members, or None."""
    found = set()
    for a in src:
        for b in dst:
            dx, dy = b.cx - a.cx, b.cy - a.cy
            if abs(dx) >= 1.5 * abs(dy) and abs(dx) >= 0.12 * width:
                found.add('left' if dx > 0 else 'right')
            elif abs(dy) >= 1.5 * abs(dx) and abs(dy) >= 0.12 * height:
                found.add('above' if dy > 0 else 'below')
            else:
                return None
    return found.pop() if len(found) == 1 else None


def _position(inst: ShapeInstance, width: int, height: int) -> str:
    col = ('left', 'center', 'right')[min(int(3 * inst.cx / width), 2)]
    row = ('top', 'middle', 'bottom')[min(int(3 * inst.cy / height), 2)]
    return _POSITION_PHRASES[row, col]


def image_captions(
    rng: np.random.Generator,
    shapes: Sequence[ShapeInstance],
    background: str,
    width: int,
    height: int,
    *,
    num: int = 5,
) -> list[str]:
    """``num`` different captions of one image.

    The pool holds list, background and count sentences for every image, spatial-relation sentences for
    every pair of object groups with a clear relation (or a position sentence for single-object images);
    up to two spatial sentences are kept, the rest is drawn from the other families.
    """
    groups: dict[tuple[str, str], list[ShapeInstance]] = {}
    for inst in shapes:
        groups.setdefault((inst.colour, inst.shape), []).append(inst)
    keys = list(groups)
    bg = BACKGROUND_WORDS[background]
    total = len(shapes)

    def objs(order: Sequence[tuple[str, str]] | None = None) -> str:
        order = keys if order is None else order
        return _join([noun_phrase(c, s, len(groups[c, s])) for c, s in order])

    def shuffled() -> list[tuple[str, str]]:
        return [keys[i] for i in rng.permutation(len(keys))]

    spatial: list[str] = []
    if len(keys) == 1 and total == 1:
        inst = shapes[0]
        for tpl in _POSITION_TEMPLATES:
            spatial.append(tpl.format(obj=objs(), pos=_position(inst, width, height), bg=bg))
    for ka, kb in combinations(keys, 2):
        if rng.random() < 0.5:
            ka, kb = kb, ka
        rel = _relation(groups[ka], groups[kb], width, height)
        if rel is None:
            continue
        rest = [k for k in keys if k not in (ka, kb)]
        tpl = _REL_TEMPLATES[int(rng.integers(len(_REL_TEMPLATES)))]
        pair = tpl.format(
            s=objs([ka]),
            o=objs([kb]),
            rel=_REL_PHRASES[rel][int(rng.integers(2))],
            be='is' if len(groups[ka]) == 1 else 'are',
        )
        if rest:
            first = groups[rest[0]]
            rest_tpl = _REST_TEMPLATES[int(rng.integers(len(_REST_TEMPLATES)))]
            pair = rest_tpl.format(pair=pair, rest=objs(rest))
            if rest_tpl.startswith('{pair}. there is') and len(first) > 1:
                pair = pair.replace('there is also', 'there are also')
        spatial.append(pair)
    shape_word = 'shape' if total == 1 else 'shapes'
    others = []
    for tpl in _LIST_TEMPLATES:
        order = shuffled()
        others.append(tpl.format(be='is' if len(groups[order[0]]) == 1 else 'are', objs=objs(order)))
    others += [tpl.format(bg=bg, objs=objs(shuffled())) for tpl in _BG_TEMPLATES]
    others += [
        tpl.format(n=NUMBER_WORDS[total], shapes=shape_word, objs=objs(shuffled()))
        for tpl in _COUNT_TEMPLATES
    ]
    spatial = [t for t in spatial if _words(t) <= MAX_WORDS]
    others = [t for t in others if _words(t) <= MAX_WORDS]
    rng.shuffle(spatial)
    chosen = spatial[:2]
    for i in rng.permutation(len(others)):
        if len(chosen) >= num:
            break
        if others[int(i)] not in chosen:
            chosen.append(others[int(i)])
    if len(chosen) < num:
        raise RuntimeError(f'only {len(chosen)} captions for {keys}')
    return [chosen[int(i)] for i in rng.permutation(len(chosen))]


def video_captions(
    rng: np.random.Generator,
    *,
    action: str,
    colour: str,
    shape: str,
    detail: str | None,
    distractor: tuple[str, str] | None = None,
    num: int = 5,
) -> list[str]:
    """``num`` different captions of a video whose ``colour shape`` performs ``action``.

    Args:
        detail: direction for ``move`` (left/right/up/down), turn sense for ``turn``
            (clockwise/counterclockwise), the new colour for ``change``, ``None`` otherwise.
        distractor: (colour, shape) of a static second shape, mentioned in some captions.
    """
    templates = list(_VIDEO_TEMPLATES[action])
    out: list[str] = []
    for i in rng.permutation(len(templates)):
        tpl = templates[int(i)]
        direction = detail
        if action == 'move':
            assert detail is not None, 'a move needs a direction'
            direction = _MOVE_PHRASES[detail][int(rng.integers(2))]
        text = tpl.format(
            a=noun_phrase(colour, shape),
            cs=f'{colour} {shape}',
            c=colour,
            s=shape,
            ac=f'{_article(colour)} {colour}',
            dir=direction,
            c2=detail,
        )
        if distractor is not None and rng.random() < 0.5:
            d_tpl = _DISTRACTOR_TEMPLATES[int(rng.integers(len(_DISTRACTOR_TEMPLATES)))]
            text = d_tpl.format(main=text, b=noun_phrase(*distractor))
        if text not in out:
            out.append(text)
        if len(out) == num:
            break
    return out


def video_questions(
    *,
    action: str,
    colour: str,
    shape: str,
    detail: str | None,
    num_shapes: int,
) -> list[tuple[str, str, int]]:
    """MSRVTT-QA style (question, one-word answer, question-type id) triples of one video.

    "which way does the <colour> <shape> move?" is asked only of ``move`` videos (the answer is the
    rendered direction), "which way does ... turn?" only of ``turn`` videos.
    """
    what, how = _QUESTION_TYPE['what'], _QUESTION_TYPE['how']
    verb = ACTION_VERBS[action]
    qa = [
        (f'what does the {shape} do?', verb, what),
        (f'what shape {verb}?' if action != 'change' else 'what shape changes colour?', shape, what),
        ('how many shapes are there?', NUMBER_WORDS[num_shapes], how),
    ]
    if action == 'change':
        qa += [
            (f'what colour is the {shape} at the start?', colour, what),
            (f'what colour does the {shape} become?', str(detail), what),
        ]
    else:
        qa += [
            (f'what colour is the {shape}?', colour, what),
            (f'what colour is the shape that {verb}?', colour, what),
            (f'what does the {colour} {shape} do?', verb, what),
        ]
    if action in ('move', 'turn'):
        qa.append((f'which way does the {colour} {shape} {action}?', str(detail), how))
    return qa


def vocabulary() -> list[str]:
    """Every word and punctuation mark any caption, question or answer can contain (sorted)."""
    texts: list[str] = []
    templates = (
        _LIST_TEMPLATES
        + _BG_TEMPLATES
        + _COUNT_TEMPLATES
        + _REL_TEMPLATES
        + _REST_TEMPLATES
        + _POSITION_TEMPLATES
        + _DISTRACTOR_TEMPLATES
        + sum(_VIDEO_TEMPLATES.values(), ())
    )
    texts += [re.sub(r'\{[a-z0-9]+\}', ' ', t) for t in templates]
    texts += list(COLOURS) + list(SHAPES) + [plural(s) for s in SHAPES] + list(NUMBER_WORDS)
    texts += list(BACKGROUND_WORDS.values()) + list(BACKGROUNDS) + list(ACTIONS) + list(ACTION_VERBS.values())
    texts += list(DIRECTIONS) + list(TURNS) + ['a', 'an', 'is', 'are', 'shape', 'shapes', 'there', 'also']
    texts += [p for v in _REL_PHRASES.values() for p in v] + list(_POSITION_PHRASES.values())
    texts += [p for v in _MOVE_PHRASES.values() for p in v]
    for action in ACTIONS:
        qa = video_questions(action=action, colour='red', shape='circle', detail='left', num_shapes=1)
        texts += [t for q, a, _ in qa for t in (q, a)]
    words = set()
    for text in texts:
        words.update(re.findall(r'[a-z]+|[^\sa-z]', text.lower()))
    return sorted(words)
