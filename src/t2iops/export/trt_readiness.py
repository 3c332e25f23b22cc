"""Will TensorRT 10 take this graph? An operator audit, shape profiles and a trtexec line.

The audit compares every node with ``trt10_supported_ops.txt`` (the operators the TensorRT 10
ONNX parser imports, with its source in the file's header) and checks the restrictions we can
see in a graph: pooling rank and dilations, and ``axes`` inputs that must be build-time
constants. When a ``tensorrt`` Python package and a CUDA device are present, the engine is
built for the profile and its outputs compared with PyTorch's; otherwise the serving spec says
that step was skipped and why.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

logger = logging.getLogger(__name__)

SUPPORTED_OPS_FILE = Path(__file__).with_name("trt10_supported_ops.txt")
# Ops whose ``axes`` input TensorRT needs as a constant, and the input position of ``axes``.
AXES_INPUT = {"Squeeze": 1, "Unsqueeze": 1, "Slice": 3, "Pad": 3, **{
    op: 1 for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                     "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
}}
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class EngineReference:
    """What a built engine's outputs are compared with: the PyTorch ``adapter`` on random
    conditions of each ``(batch, height, width)`` in ``shapes`` the profile covers, passing
    within ``tolerance`` relative error."""

    adapter: Any = None
    shapes: list = field(default_factory=list)
    tolerance: float = 1e-2


@lru_cache(maxsize=4)
def load_supported_ops(path: Path = SUPPORTED_OPS_FILE) -> tuple[dict[str, str], tuple[int, int]]:
    """``({op: restriction or ""}, (min_opset, max_opset))`` from the list kept in the repo."""
    ops: dict[str, str] = {}
    opsets = (9, 20)
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("# opset_range:"):
            low, high = line.split(":", 1)[1].strip().split("-")
            opsets = (int(low), int(high))
            continue
        if not line or line.startswith("#"):
            continue
        name, _, note = line.partition("|")
        ops[name.strip()] = note.strip()
    return ops, opsets


def audit_graph(model) -> dict:
    """Audit an ``onnx.ModelProto`` (or a path to one). ``result["ready"]`` is False when any
    node is unsupported or breaks a checked restriction; every finding names the node."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    supported, (min_opset, max_opset) = load_supported_ops()
    problems: list[dict] = []
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if opset is None or not (min_opset <= opset <= max_opset):
        problems.append({"node": None, "op": None, "reason": f"opset {opset} outside TensorRT 10's range {min_opset}-{max_opset}"})

    constants = {t.name for t in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    counts: Counter = Counter()
    for node in model.graph.node:
        label = f"{node.domain}::{node.op_type}" if node.domain not in DEFAULT_DOMAINS else node.op_type
        counts[label] += 1
        where = node.name or (node.output[0] if node.output else "?")
        if node.domain not in DEFAULT_DOMAINS:
            problems.append({"node": where, "op": label, "reason": f"custom-domain op '{node.domain}' needs a TensorRT plugin"})
            continue
        if node.op_type not in supported:
            problems.append({"node": where, "op": node.op_type, "reason": "not imported by the TensorRT 10 ONNX parser"})
            continue
        problems.extend(_restriction_problems(node, where, constants))

    used_restrictions = {op: supported[op] for op in sorted(counts) if supported.get(op)}
    return {
        "ready": not problems,
        "opset": opset,
        "ops": dict(sorted(counts.items())),
        "problems": problems,
        "restrictions_of_used_ops": used_restrictions,
        "reference": SUPPORTED_OPS_FILE.name,
    }


def _restriction_problems(node, where: str, constants: set[str]) -> list[dict]:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    found = []
    if node.op_type in ("AveragePool", "MaxPool", "LpPool"):
        kernel = attrs.get("kernel_shape", [])
        if node.op_type != "LpPool" and len(kernel) not in (2, 3):
            found.append({"node": where, "op": node.op_type, "reason": f"{len(kernel)}-D pooling (TensorRT: 2-D or 3-D)"})
        if any(d != 1 for d in attrs.get("dilations", [])):
            found.append({"node": where, "op": node.op_type, "reason": f"dilations {attrs['dilations']} (TensorRT: all 1)"})
    index = AXES_INPUT.get(node.op_type)
    if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
        found.append({"node": where, "op": node.op_type, "reason": f"axes input '{node.input[index]}' is computed at run time (TensorRT: constant)"})
    return found


# ---------------------------------------------------------------------------------------
def shape_profiles(resolutions: list[int], max_batch: int, buckets: Sequence[tuple[int, int]] = ()) -> list[dict]:
    """One profile spanning every resolution and every training bucket (height, width), batch 1
    at the largest resolution being 'opt', then one per resolution and one per bucket for
    engines specialised to a single size. Height and width range separately, so the spanning
    profile admits the widest and the tallest bucket alike."""
    sizes = sorted(set(resolutions))
    low, high = sizes[0], sizes[-1]
    heights = [low, high, *(h for h, _ in buckets)]
    widths = [low, high, *(w for _, w in buckets)]
    profiles = [{
        "name": "all",
        "min": [1, 3, min(heights), min(widths)],
        "opt": [1, 3, high, high],
        "max": [max_batch, 3, max(heights), max(widths)],
    }]
    if len(sizes) > 1 or buckets:
        profiles += [
            {"name": str(r), "min": [1, 3, r, r], "opt": [1, 3, r, r], "max": [max_batch, 3, r, r]} for r in sizes
        ]
    profiles += [
        {"name": f"{h}x{w}", "min": [1, 3, h, w], "opt": [1, 3, h, w], "max": [max_batch, 3, h, w]}
        for h, w in buckets if not (h == w and h in sizes)
    ]
    return profiles


def trtexec_command(onnx_name: str, profile: dict, input_name: str = "condition", engine_name: Optional[str] = None) -> str:
    dims = {k: "x".join(str(d) for d in profile[k]) for k in ("min", "opt", "max")}
    engine = engine_name or f"adapter_{profile['name']}_fp16.plan"
    return (
        f"trtexec --onnx={onnx_name} --minShapes={input_name}:{dims['min']} --optShapes={input_name}:{dims['opt']} "
        f"--maxShapes={input_name}:{dims['max']} --fp16 --saveEngine={engine}"
    )


def build_and_compare(onnx_path: Path, profile: dict, reference: EngineReference, seed: int = 0) -> dict:
    """Build an fp16 TensorRT engine for ``profile`` and compare its outputs with the PyTorch
    adapter's (relative error, as the ONNX parity check). Returns a status dict; never raises
    for a missing TensorRT/CUDA (the export is still valid), only reports."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install failing on its own libraries
        return {"status": "skipped", "reason": f"the tensorrt Python package is not importable here ({type(exc).__name__}: {exc})"}
    import torch

    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "tensorrt is installed but no CUDA device is visible"}

    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        return {"status": "failed", "reason": "TensorRT's ONNX parser refused the graph", "errors": errors}
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape("condition", profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return {"status": "failed", "reason": "TensorRT could not build an engine (see its log)"}
    engine = trt.Runtime(log).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    from .parity import make_conditions, relative_error

    adapter, tolerance = reference.adapter, reference.tolerance
    results = []
    stream = torch.cuda.Stream()
    for batch, height, width in reference.shapes:
        if batch > profile["max"][0] or not (profile["min"][2] <= height <= profile["max"][2]) or not (
            profile["min"][3] <= width <= profile["max"][3]
        ):
            continue
        x = make_conditions("random", batch, height, width, seed)
        with torch.no_grad():
            expected = [r.numpy() for r in adapter(torch.from_numpy(x))]
        x_gpu = torch.from_numpy(x).cuda()
        context.set_input_shape("condition", tuple(x.shape))
        context.set_tensor_address("condition", x_gpu.data_ptr())
        buffers = {}
        for name in outputs:
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            context.set_tensor_address(name, buffers[name].data_ptr())
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        got = [buffers[n].cpu().numpy() for n in sorted(outputs, key=lambda n: int(n.rsplit("_", 1)[1]))]
        err, scale, rel = relative_error(expected, got)
        results.append({"batch": batch, "height": height, "width": width, "relative_error": rel,
                        "max_abs_error": err, "passed": bool(rel <= tolerance)})
    return {
        "status": "passed" if results and all(r["passed"] for r in results) else "failed",
        "tensorrt_version": trt.__version__,
        "profile": profile["name"],
        "tolerance": tolerance,
        "cases": results,
    }


def readiness_report(
    onnx_path: Path, fp16_path: Optional[Path], resolutions: list[int], max_batch: int,
    reference: Optional[EngineReference] = None, buckets: Sequence[tuple[int, int]] = (),
) -> dict:
    """Everything the serving spec says about TensorRT: audit of each graph, profiles with their
    trtexec lines (covering ``buckets`` too, see :func:`shape_profiles`), and the engine build
    (or why it was skipped)."""
    audit = {"fp32": audit_graph(onnx_path)}
    if fp16_path is not None:
        audit["fp16"] = audit_graph(fp16_path)
    profiles = shape_profiles(resolutions, max_batch, buckets)
    for p in profiles:
        # TensorRT picks fp16 kernels itself from the fp32 graph (--fp16); feeding it the
        # fp16 graph would only add Cast layers.
        p["trtexec"] = trtexec_command(Path(onnx_path).name, p)
    if not audit["fp32"]["ready"]:
        engine = {"status": "skipped", "reason": "the operator audit found problems; see audit.fp32.problems"}
    else:
        engine = build_and_compare(Path(onnx_path), profiles[0], reference or EngineReference())
    return {"audit": audit, "profiles": profiles, "engine_check": engine}
