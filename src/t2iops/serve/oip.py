"""The Open Inference Protocol (KServe's v2 REST protocol) as ``t2iops serve`` speaks it.

Only the JSON shapes live here, with the checks of what a client sent; :mod:`.server` routes
them. One model, named as in the registry (``t2i-adapter`` by default):

request  ``POST /v2/models/<name>/infer``::

    {"id": "optional",
     "parameters": {"scale": 1.0, "steps": 20, "seed": 0, "guidance": 5.0},   # each optional
     "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a red circle"]},
                {"name": "condition", "datatype": "BYTES", "shape": [1], "data": ["<base64 PNG or JPEG>"]},
                {"name": "negative_prompt", "datatype": "BYTES", "shape": [1], "data": ["blurry"]}]}  # optional

response::

    {"model_name": "t2i-adapter", "model_version": "<adapter version>", "id": "...",
     "parameters": {"adapter_version": "...", "adapter_sha256": "...", "runtime": "torch", ...},
     "outputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                  "parameters": {"content_type": "image/png"}, "data": ["<base64 PNG>"]}]}

The sampler settings are request ``parameters`` (scalars, as the protocol's parameters are),
the tensors are ``inputs``. A failure is ``{"error": "<one line naming the field and the
problem>"}`` with a 4xx status (the request) or 5xx (the server). The generated image has the
condition's size; that size must be a multiple of the adapter's factor (the engine checks).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any, Optional

from .engine import BadRequest, GenerateRequest

TEXT_INPUTS = ("prompt", "negative_prompt")
IMAGE_INPUT = "condition"
INPUTS = ("prompt", "condition", "negative_prompt")
# name -> (type, what it is); bools are refused although Python counts them as ints
PARAMETERS = {"scale": (float, "conditioning scale"), "steps": (int, "denoising steps"),
              "seed": (int, "random seed"), "guidance": (float, "classifier-free guidance scale")}
IMAGE_FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class Limits:
    """What one request may carry. The body limit follows from the image limit (base64 is 4/3 of
    the bytes, plus room for the prompt and the JSON around them)."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 2048 * 2048  # the engine's limit too (engine.Limits.max_pixels)
    max_prompt_chars: int = 2000  # the engine's (engine.Limits.max_prompt_chars)

    @property
    def max_body_bytes(self) -> int:
        return self.max_image_bytes * 4 // 3 + 4 * self.max_prompt_chars + 64 * 1024


class TooLarge(BadRequest):
    """A request over a size limit (HTTP 413)."""


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object, or :class:`BadRequest` saying what is wrong with it."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("body", f"not JSON ({exc}): send a JSON object with \"inputs\"") from None
    if not isinstance(doc, dict):
        raise BadRequest("body", f"a JSON {type(doc).__name__}, not an object with \"inputs\"")
    return doc


def check_body_size(size: int, limits: Limits) -> None:
    if size > limits.max_body_bytes:
        raise TooLarge("body", f"{size} bytes, over the limit of {limits.max_body_bytes} "
                       f"(a condition image may be {limits.max_image_bytes} bytes at most)")


def _one_value(tensor: dict, name: str) -> Any:
    data = tensor.get("data")
    if not isinstance(data, list) or len(data) != 1:
        raise BadRequest(name, "\"data\" must be a list of exactly one element (one request, one image)")
    shape = tensor.get("shape", [1])
    if shape not in ([1], [1, 1]):
        raise BadRequest(name, f"shape {shape} is not [1]: one request generates one image")
    datatype = tensor.get("datatype", "BYTES")
    if datatype != "BYTES":
        raise BadRequest(name, f"datatype {datatype!r} is not \"BYTES\"")
    value = data[0]
    if not isinstance(value, str):
        raise BadRequest(name, "data[0] must be a string (text, or base64 for the condition)")
    return value


def infer_inputs(doc: dict) -> tuple[dict[str, Any], Optional[str]]:
    """The fields of an inference request (``prompt``, ``condition``, ...) and its id, from the
    protocol's ``inputs`` list and ``parameters``."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("inputs", "missing or empty: send the inputs \"prompt\" and \"condition\"")
    fields: dict[str, Any] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest(f"inputs[{i}]", "not an object with a \"name\"")
        name = tensor["name"]
        if name in PARAMETERS:
            raise BadRequest(name, "send it in the request's \"parameters\", not as an input")
        if name not in INPUTS:
            raise BadRequest(name, f"unknown input: the inputs are {', '.join(INPUTS)}")
        if name in fields:
            raise BadRequest(name, "given twice")
        fields[name] = _one_value(tensor, name)
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters", "must be an object, e.g. {\"steps\": 20, \"seed\": 0}")
    fields.update({k: v for k, v in parameters.items() if k in PARAMETERS})
    request_id = doc.get("id")
    return fields, str(request_id) if request_id is not None else None


def generate_request(fields: dict[str, Any], limits: Limits) -> GenerateRequest:
    """A :class:`GenerateRequest` from named fields (the protocol's inputs and parameters, or the
    JSON body of ``POST /generate``), their types checked here; their values (prompt length,
    ranges, the condition's size multiple) the engine checks (``Engine.check``)."""
    for name in ("prompt", "condition"):
        if fields.get(name) in (None, ""):
            raise BadRequest(name, "missing: a request needs a prompt and a condition image")
    for name in TEXT_INPUTS:
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(name, f"must be a string, got {type(value).__name__}")
        if value is not None and len(value) > limits.max_prompt_chars:
            raise BadRequest(name, f"{len(value)} characters, more than the limit of {limits.max_prompt_chars}")
    if not isinstance(fields["condition"], str):
        raise BadRequest("condition", "must be a base64 string of a PNG or JPEG image")
    settings = {}
    for name, (kind, what) in PARAMETERS.items():
        value = fields.get(name)
        if value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok = ok and float(value).is_integer()
        if not ok:
            raise BadRequest(name, f"{what}: must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        settings[name] = int(value) if kind is int else float(value)
    condition = decode_image(fields["condition"], limits)
    return GenerateRequest(prompt=fields["prompt"], condition=condition,
                           negative_prompt=fields.get("negative_prompt"), **settings)


def decode_image(text: str, limits: Limits, name: str = IMAGE_INPUT):
    """A base64 PNG/JPEG as an RGB PIL image, its bytes and pixels within the limits: the size
    is read from the header before any pixel is decoded."""
    from PIL import Image

    if len(text) * 3 // 4 > limits.max_image_bytes + 3:
        raise TooLarge(name, f"about {len(text) * 3 // 4} bytes, more than the limit of {limits.max_image_bytes}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(name, "not base64: send the PNG or JPEG file's bytes base64-encoded") from None
    if len(data) > limits.max_image_bytes:
        raise TooLarge(name, f"{len(data)} bytes, more than the limit of {limits.max_image_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise TooLarge(name, str(exc)) from None
    except Exception:
        raise BadRequest(name, f"not a PNG or JPEG image ({len(data)} bytes that neither format reads)") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise TooLarge(name, f"{width}x{height} is {width * height} pixels, more than the limit of "
                       f"{limits.max_image_pixels}; send a smaller condition")
    try:
        image.load()
    except Exception as exc:
        raise BadRequest(name, f"the {image.format} image is damaged ({exc})") from None
    return image.convert("RGB")


def encode_png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def infer_response(model_name: str, adapter: dict, png: bytes, request_id: Optional[str],
                   settings: dict[str, Any]) -> dict:
    """The protocol's response: the image as a base64 PNG, and which adapter made it."""
    version = adapter.get("version")
    parameters = {"adapter_version": version, "adapter_sha256": adapter.get("sha256"),
                  "runtime": adapter.get("runtime"), **settings}
    doc = {"model_name": model_name, "model_version": version,
           "parameters": {k: v for k, v in parameters.items() if v is not None},
           "outputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "parameters": {"content_type": "image/png"},
                        "data": [base64.b64encode(png).decode("ascii")]}]}
    if request_id is not None:
        doc["id"] = request_id
    return doc


def model_metadata(model_name: str, versions: list[str], limits: Limits, state: dict[str, Any]) -> dict:
    """``GET /v2/models/<name>``: the protocol's metadata (name, versions, platform, inputs,
    outputs) and, under ``parameters``, what is served and what was refused."""
    return {
        "name": model_name,
        "versions": versions,
        "platform": "t2iops-diffusers",
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1]},
                   {"name": "condition", "datatype": "BYTES", "shape": [1],
                    "parameters": {"content_type": "image/png|image/jpeg (base64)",
                                   "max_bytes": limits.max_image_bytes, "max_pixels": limits.max_image_pixels}},
                   {"name": "negative_prompt", "datatype": "BYTES", "shape": [1], "optional": True}],
        "outputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                     "parameters": {"content_type": "image/png (base64)"}}],
        "parameters": {"request_parameters": {k: w for k, (_, w) in PARAMETERS.items()},
                       "max_prompt_chars": limits.max_prompt_chars, **state},
    }


def error(message: str) -> dict:
    return {"error": message}
