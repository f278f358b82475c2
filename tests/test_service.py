"""The scoring service against a real uvicorn server on 127.0.0.1, including a bounded load test."""

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers.aesthetic_v25 import load_v25_scorer
from helpers.service import background_server, create_app, load_test, parse_args

MAX_BYTES = 256 * 1024


def png_bytes(size=(96, 96), seed=0) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def v25():
    return load_v25_scorer(device="cpu")


@pytest.fixture(scope="module")
def server(v25):
    app = create_app([v25], max_upload_bytes=MAX_BYTES, max_pixels=512 * 512)
    with background_server(app) as url:
        assert url.startswith("http://127.0.0.1:")
        yield url


def test_health_names_scorers_and_weights(server):
    body = httpx.get(server + "/health").json()
    assert body["status"] == "ok"
    assert body["scorers"] == {"aesthetic-v2.5": {"weights": "offline-random"}}


def test_score_returns_the_scorers_number(server, v25):
    data = png_bytes()
    response = httpx.post(server + "/score", files={"file": ("a.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = v25.score_images([Image.open(io.BytesIO(data))])[0]
    assert body["scores"]["aesthetic-v2.5"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert body["weights"] == {"aesthetic-v2.5": "offline-random"}
    assert (body["width"], body["height"]) == (96, 96)


@pytest.mark.parametrize("files, data, status, words", [
    ({"file": ("a.txt", b"hello", "text/plain")}, {}, 415, "content type"),
    ({"file": ("a.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")}, {}, 422, "could not read"),
    ({"file": ("a.png", b"", "image/png")}, {}, 422, "empty"),
    ({"file": ("a.png", png_bytes(), "image/png")}, {"scorers": "nope"}, 400, "unknown scorer"),
    ({"file": ("big.png", png_bytes((300, 300)), "image/png")}, {}, 413, "limit"),  # body over 256 KiB
    ({"file": ("wide.png", png_bytes((600, 500)), "image/png")}, {}, 413, "limit"),
])
def test_bad_uploads_get_a_4xx_with_a_clear_message(server, files, data, status, words):
    response = httpx.post(server + "/score", files=files, data=data)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_missing_file_field_and_unannounced_oversize_are_explained(server):
    response = httpx.post(server + "/score", data={"scorers": "aesthetic-v2.5"})
    assert response.status_code == 422 and "multipart field 'file'" in response.json()["detail"]
    # Just over the limit: passes the Content-Length check (form overhead allowed), caught when read.
    response = httpx.post(server + "/score", files={"file": ("x.png", b"\0" * (MAX_BYTES + 10), "image/png")})
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_too_many_pixels_in_a_small_file_is_refused(server):
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 2000), (10, 20, 30)).save(buffer, format="PNG")  # tiny file, 4 M pixels
    assert len(buffer.getvalue()) < MAX_BYTES
    response = httpx.post(server + "/score", files={"file": ("flat.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413 and "pixels" in response.json()["detail"]


def test_bounded_concurrent_load_has_no_errors(server):
    figures = load_test(server, png_bytes((64, 64), seed=1), n=200, concurrency=8, progress=False)
    print(f"\nload test: {figures['n']} requests, {figures['concurrency']} at a time: "
          f"p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, max {figures['max_ms']} ms, "
          f"{figures['requests_per_s']} req/s, errors {figures['errors']}")
    assert figures["errors"] == 0, figures["error_examples"]
    assert figures["ok"] == 200
    assert 0 < figures["p50_ms"] <= figures["p95_ms"]


def test_cli_parses_its_options():
    args = parse_args(["--scorers", "v25", "vlm", "--port", "9000", "--max-upload-mb", "2"])
    assert args.scorers == ["v25", "vlm"] and args.port == 9000 and args.max_upload_mb == 2
    with pytest.raises(SystemExit):
        parse_args(["--max-upload-mb", "0"])


def test_command_line_server_starts_scores_and_stops(tmp_path):
    """`python -m helpers.service` as a learner runs it: its own process, its own port."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "helpers.service", "--scorers", "v25", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up in 120 s"
            time.sleep(0.5)
        response = httpx.post(url + "/score", files={"file": ("a.png", png_bytes(), "image/png")})
        assert response.status_code == 200 and "aesthetic-v2.5" in response.json()["scores"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "serving ['aesthetic-v2.5'] (offline-random)" in (tmp_path / "server.log").read_text()
