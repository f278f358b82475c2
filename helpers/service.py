"""A scoring service: FastAPI ``POST /score`` and ``GET /health``, served by uvicorn.

Any objects with the kit's scorer interface (``.name``, ``.weights``, ``.score_images``)
can be served; a scorer that also has ``.score_with_distribution(images)`` (the VLM level
scorer) returns its level distribution too. Uploads are checked before any model sees
them: size limit (413), content type (415), readable image within a pixel limit (413/422),
each with a message that says what to send instead.

Start it from the command line::

    python -m helpers.service --scorers v25 vlm --port 8000
    curl -F file=@panel.png -F scorers=aesthetic-v2.5 http://127.0.0.1:8000/score

or in a notebook/test with :func:`background_server` (a real uvicorn server on loopback).
:func:`load_test` fires N requests K at a time and reports p50/p95 latency and errors.

Taught in ``notebooks/05_beyond_scoring.ipynb``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

# At module level: FastAPI resolves the endpoint annotations from this module's globals.
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

ALLOWED_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and small fields on top of the file itself


def _as_mapping(scorers) -> dict:
    items = list(scorers.values()) if isinstance(scorers, Mapping) else list(scorers)
    if not items:
        raise ValueError("serve at least one scorer")
    named = {s.name: s for s in items}
    if len(named) != len(items):
        raise ValueError(f"scorer names must be unique: {[s.name for s in items]}")
    return named


def create_app(scorers, max_upload_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               allowed_types: Sequence[str] = ALLOWED_TYPES):
    """A FastAPI app serving ``scorers`` (a list or ``{name: scorer}``) with upload limits.

    ``POST /score``: multipart ``file`` (the image) and optional ``scorers`` (comma-separated
    names; default all). Returns ``scores``, ``weights``, ``distributions`` (for scorers that
    give one), the image size and the seconds taken. ``GET /health``: the scorers and limits.
    Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    from PIL import Image, UnidentifiedImageError

    named = _as_mapping(scorers)
    locks = {name: threading.Lock() for name in named}  # one forward pass per model at a time
    app = FastAPI(title="Kolors story kit scoring service",
                  description="Aesthetic scores for one image per request. Scores from offline-random weights mean nothing.")
    limit_mb = f"{max_upload_bytes / 2**20:.1f} MiB"

    @app.middleware("http")
    async def reject_big_bodies(request: Request, call_next):
        # Refuse before reading the body when the client announces it is too big.
        length = request.headers.get("content-length")
        if request.url.path == "/score" and length and length.isdigit() and int(length) > max_upload_bytes + MULTIPART_OVERHEAD:
            return JSONResponse(status_code=413, content={
                "detail": f"upload of {int(length)} bytes is over the {limit_mb} limit; send a smaller image (resize or JPEG)"})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def explain_bad_form(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(status_code=422, content={
            "detail": f"bad request form ({problems}); send the image as multipart field 'file', "
                      "e.g. curl -F file=@panel.png http://HOST:PORT/score"})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "scorers": {n: {"weights": s.weights} for n, s in named.items()},
                "max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "allowed_types": list(allowed_types)}

    def run_scorer(name: str, image) -> tuple[float, dict | None]:
        scorer = named[name]
        with locks[name]:
            if hasattr(scorer, "score_with_distribution"):
                score, dist = scorer.score_with_distribution([image])[0]
                return float(score), {k: float(v) for k, v in dist.items()}
            return float(scorer.score_images([image])[0]), None

    @app.post("/score")
    async def score(file: UploadFile = File(..., description="the image"),
                    scorers: str | None = Form(None, description="comma-separated scorer names; default all")) -> dict:
        start = time.perf_counter()
        chosen = [s.strip() for s in scorers.split(",") if s.strip()] if scorers else list(named)
        unknown = [s for s in chosen if s not in named]
        if unknown or not chosen:
            raise HTTPException(400, f"unknown scorer(s) {unknown}; choose from {list(named)}")
        content_type = (file.content_type or "").split(";")[0].strip().lower()
        if content_type not in allowed_types:
            raise HTTPException(415, f"content type {content_type or 'missing'!r} is not an image type this service reads; "
                                     f"send one of {list(allowed_types)} (e.g. curl -F file=@x.png;type=image/png)")
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"image is over the {limit_mb} limit; send a smaller image (resize or JPEG)")
        if not data:
            raise HTTPException(422, "the uploaded file is empty; send the image bytes in the 'file' field")
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise HTTPException(413, f"image is {width}x{height} pixels, over the limit of {max_pixels}; resize it first")
            image.load()
            image = image.convert("RGB")
        except HTTPException:
            raise
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise HTTPException(422, f"could not read {file.filename!r} as an image ({type(exc).__name__}: {exc}); "
                                     "send a valid JPEG/PNG/WebP file") from None
        results = {}
        for name in chosen:
            results[name] = await run_in_threadpool(run_scorer, name, image)
        return {
            "filename": file.filename, "width": width, "height": height,
            "scores": {n: r[0] for n, r in results.items()},
            "weights": {n: named[n].weights for n in results},
            "distributions": {n: r[1] for n, r in results.items() if r[1] is not None},
            "seconds": round(time.perf_counter() - start, 4),
        }

    return app


@contextmanager
def background_server(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` in a real uvicorn server on a thread; yields its base URL; stops it on exit.

    ``port=0`` lets the OS pick a free port. Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {timeout:.0f}s (port in use?)")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def load_test(url: str, image_bytes: bytes, n: int = 200, concurrency: int = 8, content_type: str = "image/png",
              scorers: str | None = None, timeout: float = 120.0, progress: bool = True) -> dict:
    """POST the same image ``n`` times to ``url``/score, ``concurrency`` at a time; latency figures and errors.

    Returns ``n``, ``errors`` (non-200 or exceptions), ``error_examples``, ``p50_ms``, ``p95_ms``,
    ``max_ms``, ``mean_ms``, ``wall_s`` and ``requests_per_s``. Taught in ``05_beyond_scoring``.
    """
    import httpx
    from tqdm.auto import tqdm

    latencies: list[float] = []
    errors: list[str] = []
    data = {"scorers": scorers} if scorers else {}

    with httpx.Client(base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(_: int) -> None:
            start = time.perf_counter()
            try:
                response = client.post("/score", files={"file": ("load.png", image_bytes, content_type)}, data=data)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    return
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            latencies.append(time.perf_counter() - start)

        wall = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(tqdm(pool.map(one, range(n)), total=n, desc=f"load test ({concurrency} at a time)", disable=not progress))
        wall = time.perf_counter() - wall
    ms = sorted(1000 * v for v in latencies)

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))] if ms else float("nan")

    return {"n": n, "concurrency": concurrency, "ok": len(ms), "errors": len(errors), "error_examples": errors[:5],
            "p50_ms": round(pct(0.50), 1), "p95_ms": round(pct(0.95), 1), "max_ms": round(ms[-1], 1) if ms else float("nan"),
            "mean_ms": round(statistics.fmean(ms), 1) if ms else float("nan"), "wall_s": round(wall, 2),
            "requests_per_s": round(n / wall, 1)}


def load_scorers(names: Sequence[str], device: str | None = None, reward_path: str | None = None) -> list:
    """Build the scorers named on the command line (competition, v25, vlm, reward)."""
    scorers = []
    for name in names:
        if name == "competition":
            from .scoring import load_competition_scorer  # helpers/scoring.py (the scoring lesson)

            scorers.append(load_competition_scorer(device=device))
        elif name == "v25":
            from .aesthetic_v25 import load_v25_scorer

            scorers.append(load_v25_scorer(device=device))
        elif name == "vlm":
            from .vlm import load_vlm_scorer

            scorers.append(load_vlm_scorer(device=device))
        elif name == "reward":
            if not reward_path:
                raise ValueError("--scorers reward needs --reward-path (a reward.pt written by train_reward in 05_beyond_scoring)")
            from .reward import load_reward_scorer

            scorers.append(load_reward_scorer(reward_path, device=device))
        else:
            raise ValueError(f"unknown scorer {name!r}; choose from competition, v25, vlm, reward")
    return scorers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.service", description=__doc__.split("\n")[0])
    parser.add_argument("--scorers", nargs="+", default=["v25"], choices=["competition", "v25", "vlm", "reward"],
                        help="which scorers to serve (default: v25)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_BYTES / 2**20, help="largest accepted upload in MiB")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest accepted image, width x height")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--reward-path", default=None, help="reward.pt for --scorers reward")
    args = parser.parse_args(argv)
    if args.max_upload_mb <= 0 or args.max_pixels <= 0:
        parser.error("--max-upload-mb and --max-pixels must be positive")
    return args


def main(args: argparse.Namespace) -> int:
    import uvicorn

    scorers = load_scorers(args.scorers, args.device, args.reward_path)
    app = create_app(scorers, max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
    print(f"serving {[s.name for s in scorers]} ({', '.join(sorted({s.weights for s in scorers}))}) "
          f"on http://{args.host}:{args.port}  (POST /score, GET /health, docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
