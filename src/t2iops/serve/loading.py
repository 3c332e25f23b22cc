"""Find an adapter, check its files, load it with PyTorch or onnxruntime.

What ``--adapter`` (and the server's champion) may name:

* ``registry:champion``: the registry's champion as serving reads it (:func:`t2iops.registry.pointer.champion`:
  the newest sound history record, its manifest the one the move verified);
* ``registry:<version>``: one published version;
* an export folder or s3:// prefix (``export.json``, ``adapter.onnx``, ``adapter/``);
* a training output (``adapter/`` beside ``summary.json``) or an adapter folder (``config.json``
  and safetensors weights).

Everything read is untrusted. A registry version is verified whole first (every file against its
``_manifest.json``: :func:`t2iops.registry.integrity.verify_version`, as promote does). Then, for
any published source, each file the adapter needs is copied into a private folder through
:func:`t2iops.storage.download_listed`, which lets a file appear there only when its size and
sha256 match the manifest; the adapter is loaded from that copy, so a file swapped after the
check is never used. Only safetensors weights and JSON are read (never a pickle). A local folder
with no manifest (a hand-made or downloaded adapter) is loaded as it is, with a warning, and
``describe()`` says it was not verified.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import storage
from ..errors import ModelError, UsageError
from ..hashing import bytes_digest

log = logging.getLogger(__name__)

REGISTRY_PREFIX = "registry:"
RUNTIMES = ("torch", "onnxruntime")
EXPORT_SPEC = "export.json"  # t2iops.export.serving_spec.SERVING_SPEC_FILE
SUMMARY = "summary.json"  # a training output's record of its run (t2iops.evaluate.training_curve.SUMMARY)
ADAPTER_DIR = "adapter"
ADAPTER_FORMS = ("an export folder (export.json), a training output (adapter/), an adapter folder (config.json + "
                 "safetensors), registry:champion or registry:<version>")


@dataclass
class Source:
    """Where an adapter reference led: ``root`` (its published folder or prefix), the form it
    has, and the manifest its files are checked against (None: an unpublished local folder)."""

    ref: str
    kind: str  # registry | export | training | folder
    root: str
    version: str
    manifest: Optional[dict] = None
    manifest_sha256: Optional[str] = None
    registry: Optional[dict] = None  # registry, model name, version, generation (champion)

    @property
    def uri(self) -> str:
        return self.root

    def listed(self) -> list[str]:
        """The files the manifest lists."""
        return sorted((self.manifest or {}).get("files", {}))


@dataclass
class LoadedAdapter:
    """An adapter ready for a generator: ``module`` is a diffusers ``T2IAdapter`` (runtime torch)
    or an :class:`~t2iops.export.ort_adapter.OrtT2IAdapter` (runtime onnxruntime)."""

    module: Any
    runtime: str
    source: Source
    config: dict  # adapter_type, channels, num_res_blocks, downscale_factor, in_channels
    total_downscale_factor: int
    weights: dict  # {relative file: sha256} of what the module was loaded from
    base_record: Optional[dict] = None  # the base model the adapter was made with (a BaseModelRef dict)
    base_record_from: str = ""
    recommended_scale: Optional[float] = None  # export.json usage.adapter_conditioning_scale
    conditioning_factor: Optional[float] = None  # export.json usage.adapter_conditioning_factor
    local_dir: Optional[Path] = None  # the verified private copy
    _cleanup: Any = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return self.source.version

    @property
    def sha256(self) -> str:
        """sha256 of the weights file the module runs (the first, when there are several)."""
        return next(iter(self.weights.values()))

    @property
    def verified(self) -> bool:
        return self.source.manifest is not None

    def describe(self) -> dict:
        """What is loaded: version, the weights' sha256, runtime, source, the size multiple."""
        out = {
            "version": self.version,
            "sha256": self.sha256,
            "weights": dict(self.weights),
            "runtime": self.runtime,
            "source": self.source.uri,
            "ref": self.source.ref,
            "kind": self.source.kind,
            "verified": self.verified,
            "manifest_sha256": self.source.manifest_sha256,
            "adapter_type": self.config.get("adapter_type"),
            "size_multiple": self.total_downscale_factor,
        }
        if self.source.registry:
            out["registry"] = dict(self.source.registry)
        return out

    def base_reference(self, model_cfg: Any):
        """The base model to load for this adapter: the one it records (checked against the
        ``model.*`` settings given explicitly), or the one ``model.*`` names."""
        from ..models.reference import reference_from_record

        return reference_from_record(self.base_record, model_cfg, self.base_record_from or self.source.uri)

    def residuals(self, condition: Any) -> list:
        """The adapter's residuals (float32 numpy arrays) for an RGB PIL image or a [B, 3, H, W]
        tensor in [0, 1], as the generators feed it (pixel / 255, no mean/std)."""
        import numpy as np
        import torch

        if not isinstance(condition, torch.Tensor):
            pixels = np.asarray(condition.convert("RGB"), dtype=np.float32) / 255.0
            condition = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        with torch.inference_mode():
            outputs = self.module(condition.to(self.module.device, self.module.dtype))
        return [o.detach().float().cpu().numpy() for o in outputs]

    def close(self) -> None:
        """Remove the private copy (also done when the object is collected)."""
        if self._cleanup is not None:
            self._cleanup()


# ---------------------------------------------------------------------------------------
# Finding the source
def locate(ref: str, cfg: Any = None, registry: Optional[str] = None, model_name: Optional[str] = None) -> Source:
    """What ``ref`` names (see the module docstring); a registry version is verified whole."""
    ref = str(ref or "").strip()
    if not ref:
        raise UsageError(f"--adapter is empty: give {ADAPTER_FORMS}")
    if ref.startswith(REGISTRY_PREFIX):
        return _registry_source(ref, cfg, registry, model_name)
    return _published_source(ref, cfg)


def _registry_source(ref: str, cfg: Any, registry: Optional[str], model_name: Optional[str]) -> Source:
    from ..registry.integrity import verify_version
    from ..registry.pointer import champion
    from ..registry.versions import DEFAULT_MODEL_NAME, RegistryIntegrityError, check_name, model_root
    from ..storage.views import parse_manifest

    name = ref[len(REGISTRY_PREFIX):]
    model_name = model_name or DEFAULT_MODEL_NAME
    if not registry:
        raise UsageError(f"{ref}: no registry location: give --registry s3://bucket/prefix or a folder "
                         "(or set defaults.registry_uri in the pipeline settings)")
    generation, expected = None, None
    if name == "champion":
        served = champion(registry, model_name, cfg)
        for warning in served.warnings:
            log.warning("registry: %s", warning)
        version, root = served.record.version, served.uri
        generation, expected = served.record.generation, served.record.manifest_sha256
    else:
        version = check_name(name, f"{ref}: the version")
        root = storage.join(model_root(registry, model_name), version)
    check = verify_version(registry, model_name, version, cfg, doing="not loaded")
    data = storage.read_bytes(storage.join(root, storage.MANIFEST), cfg)
    digest = bytes_digest(data)
    if digest != check.manifest_sha256 or (expected and digest != expected):
        raise RegistryIntegrityError(
            f"{storage.join(root, storage.MANIFEST)} changed while {version!r} was being loaded (sha256 {digest}, "
            f"verified {check.manifest_sha256}{f', recorded by the champion history {expected}' if expected else ''})"
            ": not loaded")
    manifest = parse_manifest(data, storage.join(root, storage.MANIFEST))
    if EXPORT_SPEC not in manifest.get("files", {}):
        raise ModelError(f"registry version {version!r} at {root} holds no {EXPORT_SPEC}: not an export")
    where = {"registry": registry, "model_name": model_name, "version": version, "generation": generation}
    return Source(ref, "registry", root, version, manifest, digest, registry=where)


def _published_source(ref: str, cfg: Any) -> Source:
    root = ref.rstrip("/") if storage.is_s3(ref) else ref
    if not storage.is_s3(root) and not Path(root).is_dir():
        raise UsageError(f"--adapter {ref}: no such folder; give {ADAPTER_FORMS}")
    version = root.rstrip("/").rsplit("/", 1)[-1]
    manifest, digest = _manifest(root, cfg)
    if manifest is None and not storage.is_s3(root) and Path(root).resolve().name == ADAPTER_DIR:
        parent = Path(root).resolve().parent  # O/adapter of a published training output O: O is what was published
        outer, outer_digest = _manifest(str(parent), cfg)
        if outer is not None and f"{ADAPTER_DIR}/config.json" in outer.get("files", {}):
            root, manifest, digest = str(parent), outer, outer_digest
            version = parent.name
    if manifest is not None:
        files = set(manifest.get("files", {}))
    elif storage.is_s3(root):
        raise UsageError(f"--adapter {ref}: no {storage.MANIFEST} there: an s3:// adapter must be a published output")
    else:
        log.warning("adapter %s has no %s: its files are loaded without verification", ref, storage.MANIFEST)
        files = {p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file()}
    if EXPORT_SPEC in files:
        kind = "export"
    elif f"{ADAPTER_DIR}/config.json" in files:
        kind = "training"
    elif "config.json" in files:
        kind = "folder"
    else:
        raise UsageError(f"--adapter {ref}: not an adapter: give {ADAPTER_FORMS}")
    return Source(ref, kind, root, version, manifest, digest)


def _manifest(root: str, cfg: Any) -> tuple[Optional[dict], Optional[str]]:
    """The published output's manifest at ``root`` and the sha256 of its bytes, read once (so the
    digest is the parsed manifest's); (None, None) where nothing was published."""
    from ..storage.views import parse_manifest

    where = storage.join(root, storage.MANIFEST)
    try:
        data = storage.read_bytes(where, cfg)
    except FileNotFoundError:
        return None, None
    return parse_manifest(data, where), bytes_digest(data)


# ---------------------------------------------------------------------------------------
# Loading
def load_adapter(ref: str, cfg: Any = None, runtime: str = "torch", registry: Optional[str] = None,
                 model_name: Optional[str] = None) -> LoadedAdapter:
    """Locate ``ref``, copy and check the files ``runtime`` needs, load the adapter (fp32, on
    the CPU: the engine moves it to the base model's device and dtype)."""
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime {runtime!r}: choose {' or '.join(RUNTIMES)}")
    source = locate(ref, cfg, registry, model_name)
    staging = Path(tempfile.mkdtemp(prefix="t2iops-adapter-"))
    try:
        loaded = _load(source, runtime, staging, cfg)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    loaded._cleanup = weakref.finalize(loaded, shutil.rmtree, str(staging), True)
    log.info("adapter %s (%s, %s, runtime %s, sha256 %s)", loaded.version, source.kind, source.uri, runtime,
             loaded.sha256[:12])
    return loaded


def _load(source: Source, runtime: str, staging: Path, cfg: Any) -> LoadedAdapter:
    fetch = _Fetcher(source, staging, cfg)
    spec = json.loads(fetch(EXPORT_SPEC).read_text()) if source.kind in ("registry", "export") else None
    if runtime == "onnxruntime":
        if spec is None:
            raise UsageError(f"--adapter {source.ref}: runtime onnxruntime needs an export (adapter.onnx + "
                             f"{EXPORT_SPEC}; `t2iops export` writes one), not a {source.kind} folder")
        return _load_onnx(source, spec, fetch)
    return _load_torch(source, spec, fetch, cfg)


def _load_torch(source: Source, spec: Optional[dict], fetch: "_Fetcher", cfg: Any) -> LoadedAdapter:
    from ..models.locate import load_adapter as load_t2i_adapter

    sub = "" if source.kind == "folder" else f"{ADAPTER_DIR}/"
    names = [rel for rel in fetch.available() if rel.startswith(sub) and "/" not in rel[len(sub):]]
    weights = sorted(rel for rel in names if rel.endswith(".safetensors"))
    if f"{sub}config.json" not in names or not weights:
        raise ModelError(f"adapter {source.uri}: {sub or './'} needs config.json and safetensors weights "
                         f"(found {sorted(names) or 'nothing'}); no other weights format is loaded")
    for rel in [f"{sub}config.json", *weights]:
        fetch(rel)
    model_cfg = getattr(cfg, "model", None) if cfg is not None else None
    module = load_t2i_adapter(str(fetch.local(sub or ".")), model_cfg, getattr(cfg, "storage", None), dtype="fp32")
    module.eval().requires_grad_(False)
    record, where = _base_record(source, spec, fetch)
    return LoadedAdapter(
        module=module, runtime="torch", source=source, config=dict(module.config),
        total_downscale_factor=int(module.total_downscale_factor), weights={rel: fetch.sha256(rel) for rel in weights},
        base_record=record, base_record_from=where, local_dir=fetch.staging, **_usage(spec),
    )


def _load_onnx(source: Source, spec: dict, fetch: "_Fetcher") -> LoadedAdapter:
    from ..export.ort_adapter import OrtT2IAdapter

    try:
        graph = spec["files"]["onnx_fp32"]
        adapter = spec["adapter"]
        names = [graph["path"]] + ([graph["external_data"]["path"]] if graph.get("external_data") else [])
        config = {"adapter_type": adapter["type"], "channels": adapter["channels"],
                  "num_res_blocks": adapter["num_res_blocks"], "downscale_factor": adapter["downscale_factor"],
                  "in_channels": adapter.get("in_channels", 3)}
        total = int(adapter["total_downscale_factor"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{storage.join(source.uri, EXPORT_SPEC)}: no {exc} in its adapter/files records: "
                         "export the adapter again") from None
    for rel in names:
        fetch(rel)
    module = OrtT2IAdapter(fetch.local(names[0]), total_downscale_factor=total,
                           downscale_factor=config["downscale_factor"])
    record, where = _base_record(source, spec, fetch)
    return LoadedAdapter(
        module=module, runtime="onnxruntime", source=source, config=config, total_downscale_factor=total,
        weights={rel: fetch.sha256(rel) for rel in names}, base_record=record, base_record_from=where,
        local_dir=fetch.staging, **_usage(spec),
    )


def _usage(spec: Optional[dict]) -> dict:
    usage = (spec or {}).get("usage") or {}
    scale, factor = usage.get("adapter_conditioning_scale"), usage.get("adapter_conditioning_factor")
    return {"recommended_scale": float(scale) if isinstance(scale, (int, float)) else None,
            "conditioning_factor": float(factor) if isinstance(factor, (int, float)) else None}


def _base_record(source: Source, spec: Optional[dict], fetch: "_Fetcher") -> tuple[Optional[dict], str]:
    """The base model the adapter records: export.json's ``base_model`` (``id`` is the path) or
    the training run's summary.json; none for a bare adapter folder."""
    from ..models.reference import BaseModelRef

    if spec is not None:
        found = spec.get("base_model")
        if not isinstance(found, dict) or not found.get("id"):
            return None, ""
        keep = set(BaseModelRef.__dataclass_fields__) - {"path"}
        return {"path": found["id"], **{k: v for k, v in found.items() if k in keep}}, \
            f"{storage.join(source.uri, EXPORT_SPEC)} (base_model)"
    if source.kind == "training" and SUMMARY in fetch.available():
        try:
            record = json.loads(fetch(SUMMARY).read_text()).get("base_model")
        except (ValueError, AttributeError):
            raise ModelError(f"{storage.join(source.uri, SUMMARY)} is not a JSON object") from None
        return (record or None), f"training run {source.uri} ({SUMMARY})"
    return None, ""


class _Fetcher:
    """Copies a source's files into ``staging``, each checked against the manifest on the way
    (an unpublished local folder is read in place)."""

    def __init__(self, source: Source, staging: Path, cfg: Any):
        self.source, self.staging, self.cfg = source, staging, cfg
        self._files: dict[str, Path] = {}

    def available(self) -> list[str]:
        if self.source.manifest is not None:
            return self.source.listed()
        root = Path(self.source.uri)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def local(self, rel: str) -> Path:
        base = self.staging if self.source.manifest is not None else Path(self.source.uri)
        return base / rel if rel not in (".", "") else base

    def __call__(self, rel: str) -> Path:
        if rel in self._files:
            return self._files[rel]
        if self.source.manifest is None:
            path = storage.safe_target(Path(self.source.uri), rel, self.source.uri)
            if not path.is_file():
                raise ModelError(f"{path} is missing")
        else:
            if rel not in self.available():
                raise ModelError(f"{storage.join(self.source.uri, rel)}: not in the {storage.MANIFEST} it was "
                                 "published with")
            path = self.staging / rel
            storage.download_listed(self.source.root, self.source.manifest, rel, path, self.cfg)
        self._files[rel] = path
        return path

    def sha256(self, rel: str) -> str:
        if self.source.manifest is not None:
            return self.source.manifest["files"][rel]["sha256"]
        return storage.sha256_file(self._files[rel])
