"""tools/demo/app.py as a person uses it: the app is started on a free loopback port with a FIBER detector and
a MaMMUT video model trained in this session (tests/conftest.py), and headless Chromium (Debian's chromium and
chromium-driver, through Selenium) uploads an image, types names, submits and finds the drawn result and the
detections table; then a clip and a question give a caption, an answer and the sampled frames; then the
mistakes a person can make each give a message on the page while the server keeps serving. Screenshots go
to ``test-artifacts/web_app/`` (``VLT_TEST_ARTIFACTS`` to put them elsewhere).

Without Chromium the browser tests skip, naming what is missing, unless ``VLT_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs it): then they fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from toolkit.testing.browser import browser_missing, full_page_screenshot, headless_chromium
from toolkit.testing.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
DET_CONFIG = 'configs/fiber/fiber_swin-tiny-roberta-tiny_fpn-dyhead_1xb16-24e_shapes-ov.py'
VIDEO_CONFIG = 'configs/mammut/mammut_tubevit-tiny-dec4_1xb32-40e_shapes-vid.py'
ARTIFACTS = Path(os.environ.get('VLT_TEST_ARTIFACTS', REPO / 'test-artifacts')) / 'web_app'
NAMES = ('red circle', 'blue square', 'green triangle')
UPLOAD_MB = 1  # the app's --max-upload-mb in these tests

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def app_url(
    fiber_shapes_run: Path, video_shapes_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The app started with the session's tiny checkpoints on port 0 (a free one); its URL once it serves."""
    log_path = tmp_path_factory.mktemp('web_app') / 'app.log'
    command = [
        sys.executable, 'tools/demo/app.py',
        '--det-config', DET_CONFIG, '--det-checkpoint', str(fiber_shapes_run / 'epoch_1.pth'),
        '--video-config', VIDEO_CONFIG, '--video-checkpoint', str(video_shapes_run / 'epoch_2.pth'),
        '--port', '0', '--max-upload-mb', str(UPLOAD_MB), '--max-image-side', '2048', '--samples', '3',
    ]  # fmt: skip
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        url = None
        while url is None:
            text = log_path.read_text()
            for line in text.splitlines():
                if line.startswith('serving the demo at '):
                    url = line.split()[-1]
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f'the app did not start (exit code {proc.poll()}):\n{text[-4000:]}')
            time.sleep(0.2)
        yield url
        assert proc.poll() is None, f'the app died:\n{log_path.read_text()[-4000:]}'
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope='module')
def browser() -> Iterator[Any]:
    missing = browser_missing()
    if missing is not None:
        if os.environ.get('VLT_REQUIRE_BROWSER') == '1':
            pytest.fail(f'VLT_REQUIRE_BROWSER=1 but {missing}')
        pytest.skip(missing)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with headless_chromium() as driver:
        driver.implicitly_wait(0)
        yield driver


def _wait(driver: Any, css: str, timeout: float = 120.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _fill(driver: Any, css: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.CSS_SELECTOR, css)
    element.clear()
    element.send_keys(text)


def _submit(driver: Any, button: str) -> None:
    """Click ``button`` and wait for the next page (the old page's element goes stale)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, 'html')
    driver.find_element(By.CSS_SELECTOR, button).click()
    WebDriverWait(driver, 120).until(expected_conditions.staleness_of(old))
    _wait(driver, 'body')


def _screenshot(driver: Any, name: str) -> Path:
    """The whole page as ``ARTIFACTS/name.png``."""
    path = ARTIFACTS / f'{name}.png'
    width, height = full_page_screenshot(driver, str(path))
    with Image.open(path) as image:
        assert image.size == (width, height) and height >= 500
    return path


def _loaded(driver: Any, element: Any) -> tuple[int, int]:
    """The natural size of a displayed <img> (0 x 0 when it did not load)."""
    size = driver.execute_script(
        'return [arguments[0].complete, arguments[0].naturalWidth, arguments[0].naturalHeight]', element
    )
    assert size[0], 'the image is still loading'
    return int(size[1]), int(size[2])


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# ---------------------------------------------------------------------------------------------- browser
def test_detection_in_the_browser(app_url: str, browser: Any, shapes_tiny: Path) -> None:
    from selenium.webdriver.common.by import By

    image = next(iter(sorted((shapes_tiny / 'images/test').glob('*.jpg'))))
    browser.get(app_url)
    assert browser.title == 'VL-Toolkit demo'
    browser.find_element(By.ID, 'det-image').send_keys(str(image))
    _fill(browser, '#det-names', ' . '.join(NAMES))
    _fill(browser, '#det-threshold', '0')
    _submit(browser, '#det-submit')

    result = _wait(browser, '#det-result-image')
    width, height = _loaded(browser, result)
    assert (width, height) == (640, 640)  # the 128 px image, drawn upscaled
    rows = browser.find_elements(By.CSS_SELECTOR, '#det-table tbody tr')
    assert rows, 'no detections table'
    scores = []
    for row in rows:
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, 'td')]
        assert cells[1] in NAMES
        scores.append(float(cells[2]))
        x1, y1, x2, y2 = map(float, cells[3:])
        assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 128  # in the image's own pixels
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    meta = browser.find_element(By.CSS_SELECTOR, '#det-result .meta').text
    assert image.name in meta and f'{len(rows)} detection' in meta
    # The form keeps what was typed.
    assert browser.find_element(By.ID, 'det-names').get_attribute('value') == ' . '.join(NAMES)
    _screenshot(browser, 'detection_upload')

    # A bundled sample instead of an upload, a higher threshold: fewer (or as many) detections.
    browser.find_element(By.CSS_SELECTOR, 'label.sample img[alt^="sample 2"]').click()
    _fill(browser, '#det-threshold', '0.2')
    _submit(browser, '#det-submit')
    _loaded(browser, _wait(browser, '#det-result-image'))
    assert 'image1.jpg' in browser.find_element(By.CSS_SELECTOR, '#det-result .meta').text
    scores = [
        float(td.text) for td in browser.find_elements(By.CSS_SELECTOR, '#det-table tbody td:nth-child(3)')
    ]
    assert all(s >= 0.2 for s in scores)
    assert browser.find_element(By.ID, 'det-sample-image1').is_selected()
    _screenshot(browser, 'detection_sample')


def test_video_in_the_browser(app_url: str, browser: Any, shapes_tiny: Path) -> None:
    from selenium.webdriver.common.by import By

    clip = shapes_tiny / 'videos/video11.mp4'  # a test-split clip
    browser.get(app_url)
    browser.find_element(By.ID, 'vid-video').send_keys(str(clip))
    _fill(browser, '#vid-question', 'what does the shape do?')
    _submit(browser, '#vid-submit')

    caption = _wait(browser, '#vid-caption').text
    assert caption  # the caption, or the page's note that the model generated an empty one
    assert browser.find_element(By.ID, 'vid-answer').text
    assert 'Q: what does the shape do?' in browser.find_element(By.ID, 'vid-result').text
    frames = browser.find_elements(By.CSS_SELECTOR, '#vid-frames img')
    assert len(frames) == 16  # the config's SampleFrames(num_frames=16)
    assert all(_loaded(browser, frame) == (64, 64) for frame in frames)  # resized as the model saw them
    meta = browser.find_element(By.CSS_SELECTOR, '#vid-result p.meta:last-of-type').text
    assert 'video11.mp4: 16 of 16 frames sampled' in meta
    _screenshot(browser, 'video_upload')

    # A bundled clip, no question: a caption and no answer.
    browser.find_element(By.CSS_SELECTOR, 'label.sample img[alt^="sample clip 1"]').click()
    _fill(browser, '#vid-question', '')
    _submit(browser, '#vid-submit')
    _wait(browser, '#vid-caption')
    assert not browser.find_elements(By.ID, 'vid-answer')
    assert 'video0.mp4' in browser.find_element(By.ID, 'vid-result').text


def test_mistakes_show_a_message_and_the_server_keeps_serving(
    app_url: str, browser: Any, shapes_tiny: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    image = sorted((shapes_tiny / 'images/test').glob('*.jpg'))[1]
    notes = tmp_path / 'notes.txt'
    notes.write_text('not a picture, not a clip\n')
    wide = tmp_path / 'wide.png'
    Image.new('RGB', (3000, 8), (90, 90, 90)).save(wide)  # 3000 px wide, --max-image-side 2048
    big = tmp_path / 'big.mp4'
    big.write_bytes(np.random.default_rng(0).bytes((UPLOAD_MB + 1) * 2**20))

    def detect(upload: Path | None, names: str) -> str:
        browser.get(app_url)
        if upload is not None:
            browser.find_element(By.ID, 'det-image').send_keys(str(upload))
        _fill(browser, '#det-names', names)
        _submit(browser, '#det-submit')
        alerts = browser.find_elements(By.CSS_SELECTOR, '[role=alert]')
        return alerts[0].text if alerts else ''

    message = detect(image, '  .  ')
    assert message.startswith('Type at least one category name')
    _screenshot(browser, 'error_no_names')
    assert 'notes.txt is not a readable image' in detect(notes, 'red circle')
    message = detect(wide, 'red circle')
    assert 'wide.png is 3000 x 8 pixels' in message and '2048' in message
    _screenshot(browser, 'error_huge_image')
    assert detect(None, 'red circle') == 'Choose an image to upload or pick one of the samples.'
    assert 'too large' in detect(big, 'red circle') and f'{UPLOAD_MB} MiB' in browser.page_source

    browser.get(app_url)
    browser.find_element(By.ID, 'vid-video').send_keys(str(notes))
    _submit(browser, '#vid-submit')
    message = browser.find_element(By.ID, 'vid-error').text
    assert message.startswith('notes.txt is not a readable video: a text file, not a video')
    _screenshot(browser, 'error_not_a_video')

    # Still serving: the same image with names now gives detections.
    assert detect(image, 'red circle') == ''
    _loaded(browser, browser.find_element(By.ID, 'det-result-image'))
    status, _, body = _get(app_url + 'healthz')
    assert status == 200 and json.loads(body)['status'] == 'ok'


# ---------------------------------------------------------------------------------------------- HTTP
def test_the_page_stays_local_and_bounded(app_url: str) -> None:
    assert app_url.startswith('http://127.0.0.1:')  # loopback unless --host says otherwise
    status, headers, body = _get(app_url)
    assert status == 200
    page = body.decode()
    csp = headers['content-security-policy']
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and 'script-src' not in csp
    assert (
        '<script' not in page and 'http://' not in page and 'https://' not in page
    )  # nothing from other hosts
    assert headers['x-content-type-options'] == 'nosniff'
    # Samples are served by name from the bundled set only.
    assert _get(app_url + 'samples/image0.jpg')[0] == 200
    for name in ('..%2F..%2Fetc%2Fpasswd', 'app.html', 'tokenizer.json'):
        assert _get(app_url + f'samples/{name}')[0] == 404
    # A declared body over the limit is refused with the page before the app reads it.
    request = urllib.request.Request(
        app_url + 'detect',
        data=b'x' * ((UPLOAD_MB + 1) * 2**20),
        headers={'Content-Type': 'multipart/form-data; boundary=xyz'},
    )
    try:
        urllib.request.urlopen(request, timeout=60)
        raise AssertionError('an upload over the limit was accepted')
    except urllib.error.HTTPError as err:
        assert err.code == 413 and b'The upload is too large' in err.read()


def test_one_model_call_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    app_models = load_script(REPO / 'tools/demo/app_models.py')
    ModelGate, ServerBusy = app_models.ModelGate, app_models.ServerBusy

    gate = ModelGate(max_waiting=8, timeout=30)
    active, peak, lock = [0], [0], threading.Lock()

    def call(index: int) -> int:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return index

    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(gate.run(call, i))) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(6)) and peak[0] == 1 and gate.calls == 6

    # While a call holds the model: no room to wait -> busy at once; a short wait -> busy after it.
    started, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=gate.run, args=(lambda: (started.set(), release.wait(10)),))
    holder.start()
    started.wait(10)
    try:
        gate.max_waiting = 0
        with pytest.raises(ServerBusy, match='requests are waiting'):
            gate.run(call, 0)
        gate.max_waiting, gate.timeout = 4, 0.2
        begin = time.monotonic()
        with pytest.raises(ServerBusy, match='stayed busy for 0.2 s'):
            gate.run(call, 0)
        assert time.monotonic() - begin >= 0.2
    finally:
        release.set()
        holder.join()
    assert gate.run(call, 7) == 7 and gate.waiting == 0  # free again
