"""``t2iops serve`` through real HTTP: a real server process on 127.0.0.1, the tiny SD1.5 base, a
folder registry whose champion was exported and published as a run does it.

Bad requests (missing field, non-image, too many bytes or pixels, a size off the adapter's
multiple, a 10,000-character prompt, bad JSON) each get a 4xx naming the problem, and the server
keeps serving; 8 concurrent clients get no error. One server for the module, running the exported
ONNX adapter (about 20 s on a quiet 2-core machine, 85 s on a loaded one, most of it the
server's start)."""
from __future__ import annotations

import base64
import io
import json
import random
import signal
import threading
import time

import pytest
from PIL import Image

from serve_support import MODEL, Server, cli, condition_png, export_tiny_adapter, infer_body, publish

pytestmark = pytest.mark.slow

INFER = f"/v2/models/{MODEL}/infer"
MAX_IMAGE_BYTES = 100_000
MAX_IMAGE_PIXELS = 512 * 512


@pytest.fixture(scope="module")
def server(tiny_sd15_path, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-http")
    registry = str(work / "registry")
    publish(export_tiny_adapter(tiny_sd15_path, work / "v1", seed=1), registry, "v1")
    cli("registry", "promote", "v1", "--registry", registry)
    # the exported ONNX graph through onnxruntime here; test_serve_swap serves the PyTorch adapter
    srv = Server(registry, tiny_sd15_path, work, 1.0, "--max-image-bytes", str(MAX_IMAGE_BYTES),
                 "--max-image-pixels", str(MAX_IMAGE_PIXELS), "--runtime", "onnxruntime")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _png(width: int, height: int, noise: bool = False) -> str:
    if noise:
        rng = random.Random(0)
        image = Image.frombytes("RGB", (width, height), bytes(rng.getrandbits(8) for _ in range(width * height * 3)))
    else:
        image = Image.new("RGB", (width, height), (0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _image(doc: dict) -> Image.Image:
    (output,) = doc["outputs"]
    assert output["name"] == "image" and output["datatype"] == "BYTES" and output["shape"] == [1]
    return Image.open(io.BytesIO(base64.b64decode(output["data"][0])))


def test_health_metadata_and_one_image(server):
    assert server.json("GET", "/v2/health/live") == (200, {"live": True})
    assert server.json("GET", "/v2/health/ready") == (200, {"ready": True})
    status, meta = server.json("GET", f"/v2/models/{MODEL}")
    assert status == 200 and meta["name"] == MODEL and meta["versions"] == ["v1"]
    assert meta["parameters"]["serving"]["verified"] is True
    assert meta["parameters"]["serving"]["size_multiple"] == 16
    assert meta["parameters"]["serving"]["runtime"] == "onnxruntime"
    status, doc = server.json("POST", INFER, {**infer_body(seed=7, steps=2), "id": "req-1"})
    assert status == 200, doc
    assert doc["model_name"] == MODEL and doc["model_version"] == "v1" and doc["id"] == "req-1"
    assert doc["parameters"]["adapter_version"] == "v1" and doc["parameters"]["seed"] == 7
    assert doc["parameters"]["runtime"] == "onnxruntime"
    assert doc["parameters"]["adapter_sha256"] == meta["parameters"]["serving"]["sha256"]
    image = _image(doc)
    assert image.format == "PNG" and image.size == (64, 64)
    # the same request (same seed) draws the same image; another seed another one
    again = _image(server.json("POST", INFER, infer_body(seed=7, steps=2))[1])
    other = _image(server.json("POST", INFER, infer_body(seed=8, steps=2))[1])
    assert image.tobytes() == again.tobytes() != other.tobytes()
    # the plain route: image/png with the version in a header
    body = {"prompt": "a red circle", "condition": condition_png(), "seed": 7, "steps": 2}
    status, headers, png = server.request("POST", "/generate", body)
    assert status == 200 and headers["content-type"] == "image/png" and headers["x-adapter-version"] == "v1"
    assert Image.open(io.BytesIO(png)).tobytes() == image.tobytes()


BAD = {
    "missing prompt": (lambda: {"inputs": infer_body()["inputs"][1:]}, 400, "prompt: missing"),
    "missing condition": (lambda: {"inputs": infer_body()["inputs"][:1]}, 400, "condition: missing"),
    "no inputs": (lambda: {"parameters": {"steps": 2}}, 400, "inputs: missing or empty"),
    "not base64": (lambda: infer_body(condition="not base64 at all!"), 400, "condition: not base64"),
    "not an image": (lambda: infer_body(condition=base64.b64encode(b"GIF89a, or rather nothing").decode()),
                     400, "condition: not a PNG or JPEG image"),
    "too many bytes": (lambda: infer_body(condition=_png(200, 200, noise=True)), 413,
                       f"more than the limit of {MAX_IMAGE_BYTES}"),
    "too many pixels": (lambda: infer_body(condition=_png(1024, 1024)), 413,
                        f"1024x1024 is 1048576 pixels, more than the limit of {MAX_IMAGE_PIXELS}"),
    "size off the multiple": (lambda: infer_body(condition=_png(60, 64)), 400,
                              "condition: width 60 (nearest valid: 48 or 64): each side must be a multiple of 16"),
    "10,000-character prompt": (lambda: infer_body(prompt="a" * 10_000), 400,
                                "prompt: 10000 characters, more than the limit of 2000"),
    "steps out of range": (lambda: infer_body(steps=0), 400, "steps: 0 is out of range"),
    "steps not a number": (lambda: infer_body(steps="many"), 400, "steps: denoising steps: must be an integer"),
    "unknown input": (lambda: {"inputs": [*infer_body()["inputs"], {"name": "mask", "datatype": "BYTES",
                                                                     "shape": [1], "data": ["x"]}]},
                      400, "mask: unknown input"),
    "two images": (lambda: {"inputs": [infer_body()["inputs"][0], {**infer_body()["inputs"][1], "shape": [2],
                                                                   "data": [condition_png(), condition_png()]}]},
                   400, "condition: \"data\" must be a list of exactly one element"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_a_4xx_naming_the_problem_and_the_server_keeps_serving(server, case):
    make, code, message = BAD[case]
    status, doc = server.json("POST", INFER, make())
    assert status == code and message in doc["error"], doc
    assert "\n" not in doc["error"]
    assert server.version() == "v1"


def test_bad_json_unknown_model_and_unknown_field(server):
    status, _, data = server.request("POST", INFER, raw=b'{"inputs": [')
    assert status == 400 and json.loads(data)["error"].startswith("body: not JSON"), data
    status, doc = server.json("POST", "/v2/models/other/infer", infer_body())
    assert status == 404 and doc["error"] == f"unknown model 'other': this server serves '{MODEL}'"
    status, doc = server.json("POST", "/generate", {"prompt": "a", "condition": condition_png(), "stepz": 2})
    assert status == 400 and doc["error"].startswith("stepz: unknown field: the fields are prompt, condition"), doc
    status, _, data = server.request("POST", INFER, raw=b"x" * (MAX_IMAGE_BYTES * 3))
    assert status == 413 and json.loads(data)["error"].startswith("body: 300000 bytes, over the limit"), data
    status, meta = server.json("GET", f"/v2/models/{MODEL}")
    assert meta["parameters"]["rejected_requests"] >= 3 and meta["parameters"]["ready"] is True
    assert server.version() == "v1"


def test_concurrent_clients_get_no_error(server):
    clients, each = 8, 2
    results, lock = [], threading.Lock()

    def client(i: int) -> None:
        for j in range(each):
            started = time.monotonic()
            status, doc = server.json("POST", INFER, infer_body(seed=100 * i + j, steps=2), timeout=120)
            with lock:
                results.append((status, doc.get("model_version"), doc.get("error"), time.monotonic() - started))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    wall = time.monotonic() - started
    assert len(results) == clients * each, results
    assert {(s, v, e) for s, v, e, _ in results} == {(200, "v1", None)}
    assert wall < 150
    status, meta = server.json("GET", f"/v2/models/{MODEL}")
    assert meta["parameters"]["in_flight"] == 0 and meta["parameters"]["generated"]["v1"] >= clients * each


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_a_stop_lets_the_request_in_flight_finish_then_exits_cleanly(server, tmp_path, sig, code):
    """SIGTERM (a pod's stop) or Ctrl-C while a request is being generated: that request still
    gets its image, the server exits with 0 or 130, and its adapter's local copy is gone."""
    srv = Server(server.registry, server.base_path, tmp_path, 0)
    answer = {}
    try:
        srv.wait_ready()
        request = threading.Thread(target=lambda: answer.update(zip(("status", "doc"), srv.json(
            "POST", INFER, infer_body(seed=7, steps=40), timeout=120))))
        request.start()
        deadline = time.monotonic() + 60
        while srv.json("GET", f"/v2/models/{MODEL}")[1]["parameters"]["in_flight"] == 0:
            assert time.monotonic() < deadline and request.is_alive(), f"the request never started: {answer}"
            time.sleep(0.05)
        stopped = srv.stop(sig)
        request.join(120)
    finally:
        srv.stop()
    assert answer.get("status") == 200 and answer["doc"]["model_version"] == "v1", answer
    assert (stopped, srv.leftovers()) == (code, []), srv.log.read_text()[-2000:]
