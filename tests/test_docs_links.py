"""Every relative link and image in README.md and docs/ points at a file that exists, and every
`#anchor` into a markdown file names one of its headings (GitHub's heading ids)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]

# [text](target) and ![alt](target); the target ends at whitespace or ')', an optional "title" may follow.
LINK = re.compile(r'!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^\s)>]+)>?(?:\s+"[^"]*")?\s*\)')
INLINE_CODE = re.compile(r'`+[^`]*`+')


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code removed."""
    out, fence = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith(('```', '~~~')):
            fence = not fence
            continue
        if not fence:
            out.append((number, INLINE_CODE.sub('', line)))
    return out


def heading_ids(text: str) -> set[str]:
    """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces to '-', '-N' on repeats."""
    ids: set[str] = set()
    seen: dict[str, int] = {}
    fence = False
    for line in text.splitlines():
        if line.lstrip().startswith(('```', '~~~')):
            fence = not fence
            continue
        match = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
        if fence or not match:
            continue
        slug = re.sub(r'[^\w\- ]', '', match.group(1).lower()).replace(' ', '-')
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f'{slug}-{count}')
    return ids


def relative_links(page: Path) -> list[tuple[int, str]]:
    links = []
    for number, line in prose_lines(page.read_text(encoding='utf-8')):
        for target in LINK.findall(line):
            if not re.match(r'^[a-z][a-z0-9+.-]*:', target, re.IGNORECASE):  # http:, https:, mailto:
                links.append((number, target))
    return links


def test_pages_found():
    assert (ROOT / 'docs' / 'README.md') in PAGES
    assert any(relative_links(page) for page in PAGES)


def test_parser():
    text = '# The web demo: `make app`\n## A\n## A\n```\n[x](missing.md)\n```\n'
    assert heading_ids(text) == {'the-web-demo-make-app', 'a', 'a-1'}
    assert [n for n, _ in prose_lines(text)] == [1, 2, 3]  # the fenced link is not prose
    line = 'See [a](x.md#b), ![img](images/y.png "t") and `[c](code.md)` or [d](https://e.org).'
    assert LINK.findall(INLINE_CODE.sub('', line)) == ['x.md#b', 'images/y.png', 'https://e.org']


@pytest.mark.parametrize('page', PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path):
    broken = []
    for number, target in relative_links(page):
        path_part, _, anchor = target.partition('#')
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f'{page.relative_to(ROOT)}:{number}: {target}'
        if not dest.exists():
            broken.append(f'{where} (no such file)')
        elif anchor and dest.suffix == '.md' and anchor not in heading_ids(dest.read_text(encoding='utf-8')):
            broken.append(f'{where} (no heading #{anchor} in {dest.relative_to(ROOT)})')
    assert not broken, 'broken links:\n' + '\n'.join(broken)
