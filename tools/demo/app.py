"""A local web page for open-vocabulary detection and video captioning / question answering.

``python tools/demo/app.py --det-config C --det-checkpoint K [--video-config C2 --video-checkpoint K2]
[--port P]`` serves http://127.0.0.1:P/ (7860 by default; ``--port 0`` picks a free port, printed):

* detection: upload an image or pick a bundled Shapes World sample, type category names separated by
  " . ", set a score threshold; the page shows the boxes drawn with names and scores and a table of the
  detections (boxes in the image's own pixels). The detector (FIBER or MaMMUT) is loaded once;
* video (with a video model): upload a short clip or pick a sample, type a question; the page shows the
  generated caption, the answer and the frames the model sampled.

It is a Starlette app served by uvicorn with a plain HTML page: no JavaScript, nothing loaded from other
hosts (the Content-Security-Policy forbids it), no analytics, no outbound connection. Requests are bounded:
uploads over ``--max-upload-mb`` are refused before they are read, images over ``--max-image-side`` pixels
before they are decoded, and one model call runs at a time (``--max-waiting`` requests queue, each for at
most ``--queue-timeout`` s). Mistakes (no names, an unreadable or huge image, a file that is not a video)
come back as a message on the page; the server keeps serving. It listens on 127.0.0.1 unless ``--host``
says otherwise. The samples (``--samples`` images and videos, Shapes World seed ``--samples-seed``, not in
a seed-0 training set) are drawn at start-up into a temporary folder.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os.path as osp
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import jinja2
import uvicorn
from app_models import DetectionService, InputError, ModelGate, ServerBusy, VideoService
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from detection.apis import parse_names
from toolkit.shapes_world import render_samples
from toolkit.video_io import VIDEO_EXTENSIONS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOG = logging.getLogger('vlt.app')
TEMPLATES = osp.join(osp.dirname(osp.abspath(__file__)), 'templates')
DEFAULT_NAMES = 'red circle . blue square . green triangle . yellow star'
DEFAULT_QUESTION = 'what does the shape do?'
# Nothing but this origin and inline styles and data: images; no script at all.
SECURITY_HEADERS = [
    (
        b'content-security-policy',
        b"default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'; "
        b"base-uri 'none'; frame-ancestors 'none'",
    ),
    (b'x-content-type-options', b'nosniff'),
    (b'referrer-policy', b'no-referrer'),
    (b'cache-control', b'no-store'),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--det-config', required=True, help='open-vocabulary detector config (FIBER, MaMMUT)')
    parser.add_argument('--det-checkpoint', required=True, help='its checkpoint (.pth or .safetensors)')
    parser.add_argument('--video-config', help='MaMMUT video config (captioning and QA)')
    parser.add_argument('--video-checkpoint', help='its checkpoint')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on (default 127.0.0.1)')
    parser.add_argument('--port', type=int, default=7860, help='port (0: a free one, printed)')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu, cuda')
    parser.add_argument(
        '--names', default=DEFAULT_NAMES, help='names filled in at first and checked at start'
    )
    parser.add_argument('--max-upload-mb', type=float, default=20.0, help='largest request body (MiB)')
    parser.add_argument('--max-image-side', type=int, default=4096, help='longest image side accepted (px)')
    parser.add_argument('--max-waiting', type=int, default=4, help='requests that may wait for the model')
    parser.add_argument('--queue-timeout', type=float, default=120.0, help='seconds a request may wait')
    parser.add_argument('--samples', type=int, default=6, help='bundled sample images (and videos: 2/3)')
    parser.add_argument('--samples-seed', type=int, default=1, help='Shapes World seed of the samples')
    args = parser.parse_args(argv)
    if (args.video_config is None) != (args.video_checkpoint is None):
        parser.error('--video-config and --video-checkpoint go together')
    for flag in ('det_config', 'det_checkpoint', 'video_config', 'video_checkpoint'):
        path = getattr(args, flag)
        if path is not None and not osp.isfile(path):
            parser.error(f'--{flag.replace("_", "-")} {path} does not exist')
    if args.max_upload_mb <= 0 or args.max_image_side < 1 or args.max_waiting < 0 or args.queue_timeout <= 0:
        parser.error('limits must be positive')
    if not 0 <= args.port < 65536:
        parser.error(f'--port must be in [0, 65535], got {args.port}')
    return args


# ---------------------------------------------------------------------------------------------- limits
class UploadTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with a 413 page. A declared
    Content-Length over the limit is answered before the app sees the request (the body is read and
    dropped, up to 16 times the limit, so that the browser gets the page rather than a reset connection); a
    body that turns out longer than declared or than the limit stops the app's reading (UploadTooLarge)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, render: Callable[[str], bytes]) -> None:
        self.app, self.max_bytes, self.render = app, max_bytes, render

    def message(self, size: int | None) -> str:
        limit = f'{self.max_bytes / 2**20:g} MiB'
        got = f'{size / 2**20:.1f} MiB' if size is not None else 'more'
        return f'The upload is too large: {got} sent, the limit is {limit} (--max-upload-mb).'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope['type'] != 'http':
            await self.app(scope, receive, send)
            return
        headers = dict(scope['headers'])
        declared = headers.get(b'content-length')
        size = int(declared) if declared and declared.isdigit() else None
        if size is not None and size > self.max_bytes:
            drained = 0
            while drained <= 16 * self.max_bytes:
                message = await receive()
                drained += len(message.get('body', b''))
                if message['type'] != 'http.request' or not message.get('more_body'):
                    break
            body = self.render(self.message(size))
            await send(
                {
                    'type': 'http.response.start',
                    'status': 413,
                    'headers': [
                        (b'content-type', b'text/html; charset=utf-8'),
                        *SECURITY_HEADERS,
                        (b'content-length', str(len(body)).encode()),
                    ],  # fmt: skip
                }
            )
            await send({'type': 'http.response.body', 'body': body})
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get('body', b''))
            if received > self.max_bytes:
                raise UploadTooLarge(self.message(None))
            return message

        await self.app(scope, counted, send)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message['type'] == 'http.response.start':
                names = {name for name, _ in SECURITY_HEADERS}
                message['headers'] = [
                    *(h for h in message.get('headers', []) if h[0] not in names),
                    *SECURITY_HEADERS,
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


# ---------------------------------------------------------------------------------------------- the app
def _data_url(png: bytes) -> str:
    return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


class DemoApp:
    """The page, its two forms and the bundled samples, around the two model services."""

    def __init__(
        self,
        *,
        detector: DetectionService,
        video: VideoService | None,
        gate: ModelGate,
        samples: dict[str, list[dict[str, Any]]],
        info: dict[str, str],
        default_names: str,
        max_upload_mb: float,
    ) -> None:
        self.detector, self.video, self.gate, self.info = detector, video, gate, info
        self.default_names, self.max_upload_mb = default_names, max_upload_mb
        self.image_samples = {f'image{i}': s for i, s in enumerate(samples['images'])}
        self.video_samples = {f'video{i}': s for i, s in enumerate(samples['videos'])}
        self.files = {osp.basename(s['file']): s['file'] for s in samples['images']}
        self.files.update({osp.basename(s['poster']): s['poster'] for s in samples['videos']})
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
        env.filters['data_url'] = _data_url
        env.filters['basename'] = osp.basename
        self.template = env.get_template('app.html')

    # --------------------------------------------------------------------------------- rendering
    def render(self, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.render_bytes(**context), status_code=status)

    def render_bytes(self, **context: Any) -> bytes:
        context.setdefault('det', dict(names=self.default_names, threshold='0.3', sample=''))
        context.setdefault('vid', dict(question=DEFAULT_QUESTION, sample=''))
        return self.template.render(
            info=self.info,
            image_samples=self.image_samples,
            video_samples=self.video_samples,
            has_video=self.video is not None,
            limits=dict(upload_mb=f'{self.max_upload_mb:g}', image_side=self.detector.max_image_side),
            **context,
        ).encode('utf-8')

    def error_page(self, message: str) -> bytes:
        """A page for errors met before a form is known (the upload limit)."""
        return self.render_bytes(page_error=message)

    # --------------------------------------------------------------------------------- endpoints
    async def index(self, request: Request) -> Response:
        return self.render()

    async def health(self, request: Request) -> Response:
        return JSONResponse(
            dict(status='ok', model_calls=self.gate.calls, waiting=self.gate.waiting, **self.info)
        )

    async def sample_file(self, request: Request) -> Response:
        path = self.files.get(request.path_params['name'])
        if path is None:
            return self.render(404, page_error=f'No sample called {request.path_params["name"]!r}.')
        return FileResponse(path)

    @staticmethod
    async def _upload(form: Any, field: str) -> tuple[bytes, str] | None:
        upload = form.get(field)
        if not isinstance(upload, UploadFile) or not upload.filename:
            return None
        data = await upload.read()
        name = osp.basename(upload.filename.replace('\\', '/'))[:120] or 'upload'
        if not data:
            raise InputError(f'{name} is empty (0 bytes).')
        return data, name

    async def detect(self, request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        det = dict(
            names=str(form.get('names') or ''),
            threshold=str(form.get('threshold') or '0.3'),
            sample=str(form.get('sample') or ''),
        )
        try:
            threshold = float(det['threshold'])
            if not 0.0 <= threshold <= 1.0:
                raise ValueError
        except ValueError:
            return self.render(400, det=det, det_error=f'The score threshold must be a number from 0 to 1, '
                               f'got {det["threshold"][:20]!r}.')  # fmt: skip
        try:
            upload = await self._upload(form, 'image')
            if upload is None:
                sample = self.image_samples.get(det['sample'])
                if sample is None:
                    raise InputError('Choose an image to upload or pick one of the samples.')
                with open(sample['file'], 'rb') as handle:
                    upload = handle.read(), osp.basename(sample['file'])
            else:
                det['sample'] = ''
            result = await run_in_threadpool(self.gate.run, self.detector, *upload, det['names'], threshold)
        except InputError as err:
            return self.render(err.status, det=det, det_error=str(err))
        except ServerBusy as err:
            return self.render(503, det=det, det_error=f'Busy: {err}.')
        return self.render(det=det, det_result=result)

    async def describe(self, request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        vid = dict(question=str(form.get('question') or ''), sample=str(form.get('sample') or ''))
        if self.video is None:
            return self.render(404, vid=vid, vid_error='No video model: start the app with --video-config '
                               'and --video-checkpoint.')  # fmt: skip
        try:
            upload = await self._upload(form, 'video')
            with tempfile.TemporaryDirectory(prefix='vlt-app-upload-') as folder:
                if upload is None:
                    sample = self.video_samples.get(vid['sample'])
                    if sample is None:
                        raise InputError('Choose a video to upload or pick one of the samples.')
                    path, name = sample['file'], osp.basename(sample['file'])
                else:
                    vid['sample'] = ''
                    data, name = upload
                    extension = osp.splitext(name)[1].lower()
                    path = osp.join(folder, 'upload' + (extension if extension in VIDEO_EXTENSIONS else ''))
                    with open(path, 'wb') as handle:
                        handle.write(data)
                result = await run_in_threadpool(self.gate.run, self.video, path, name, vid['question'])
        except InputError as err:
            return self.render(err.status, vid=vid, vid_error=str(err))
        except ServerBusy as err:
            return self.render(503, vid=vid, vid_error=f'Busy: {err}.')
        return self.render(vid=vid, vid_result=result)

    async def too_large(self, request: Request, exc: Exception) -> Response:
        return HTMLResponse(self.error_page(str(exc)), status_code=413)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        LOG.exception('request %s %s failed', request.method, request.url.path, exc_info=exc)
        message = f'The model failed on this input ({type(exc).__name__}: {exc}); the server log has details.'
        return HTMLResponse(self.error_page(message), status_code=500)


def build_app(demo: DemoApp) -> ASGIApp:
    """The Starlette app with its routes, wrapped in the upload limit and the security headers."""
    app = Starlette(
        routes=[
            Route('/', demo.index),
            Route('/healthz', demo.health),
            Route('/samples/{name}', demo.sample_file),
            Route('/detect', demo.detect, methods=['POST']),
            Route('/video', demo.describe, methods=['POST']),
        ],
        exception_handlers={UploadTooLarge: demo.too_large, Exception: demo.server_error},
    )
    limited = BodyLimit(app, max_bytes=int(demo.max_upload_mb * 2**20), render=demo.error_page)
    return SecurityHeaders(limited)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    samples_dir = tempfile.mkdtemp(prefix='vlt-app-samples-')
    try:
        samples = render_samples(
            samples_dir, seed=args.samples_seed, images=args.samples, videos=max(1, 2 * args.samples // 3)
        )
        detector = DetectionService(
            config=args.det_config,
            checkpoint=args.det_checkpoint,
            names=parse_names(args.names),
            device=args.device,
            max_image_side=args.max_image_side,
        )
        video = None
        if args.video_config:
            video = VideoService(
                config=args.video_config, checkpoint=args.video_checkpoint, device=args.device
            )
        info = dict(det_config=args.det_config, det_checkpoint=args.det_checkpoint)
        if args.video_config:
            info.update(video_config=args.video_config, video_checkpoint=args.video_checkpoint)
        demo = DemoApp(
            detector=detector,
            video=video,
            gate=ModelGate(max_waiting=args.max_waiting, timeout=args.queue_timeout),
            samples=samples,
            info=info,
            default_names=args.names,
            max_upload_mb=args.max_upload_mb,
        )
        app = build_app(demo)
        family = socket.AF_INET6 if ':' in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        host, port = sock.getsockname()[:2]
        url = f'http://{f"[{host}]" if family == socket.AF_INET6 else host}:{port}/'
        if args.host not in ('127.0.0.1', 'localhost', '::1'):
            print(f'warning: listening on {args.host}: anyone who can reach this machine can use the models')
        print(f'serving the demo at {url}', flush=True)
        config = uvicorn.Config(app, log_level='warning', server_header=False, access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        shutil.rmtree(samples_dir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except (ValueError, OSError) as error:  # a bad config, checkpoint, name or address
        sys.exit(f'app: error: {error}')
