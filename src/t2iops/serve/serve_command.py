"""``t2iops serve``: its parser, and what it wires together (the registry's champion, the loader,
the watcher, the HTTP server)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional

logger = logging.getLogger(__name__)

CHAMPION = "registry:champion"

SERVE_DESCRIPTION = """Serve the registry's champion over HTTP: the Open Inference Protocol (KServe v2 REST).

Loads the champion (every file checked against its manifest first) and the base model it was
trained on, then answers:
  GET  /v2/health/live, /v2/health/ready, /v2/models/<model>/ready   (503 while loading)
  GET  /v2/models/<model>          metadata: the version served, refused versions, limits
  POST /v2/models/<model>/infer    inputs prompt, condition (BYTES: base64 PNG/JPEG), optional
                                   negative_prompt; parameters scale, steps, seed, guidance
                                   -> output image (BYTES: base64 PNG) + parameters.adapter_version
  POST /generate                   {"prompt": ..., "condition": <base64>, "steps": ...} -> image/png
                                   with X-Adapter-Version

Every --poll-seconds it reads the champion again; a newly promoted (or rolled-back) version is
loaded and verified beside the one serving, then swapped in: requests in flight finish with the
version they started with. A version that fails verification is refused (logged, listed under
`refused` in the metadata) and the current one keeps serving. The generated image has the
condition's size, which must be a multiple of the adapter's size multiple; the sampler defaults
are the `evaluate` settings. A bad request gets a 4xx and {"error": "<field>: <problem>"}.

Binds 127.0.0.1 unless --host says otherwise. Stop with SIGTERM (a pod's stop; exit code 0)
or Ctrl-C (130): requests in flight finish first, and the local copies of the adapters are
removed. docs/serving.md has examples."""


def settings_registry(settings: Optional[str]) -> str:
    """``defaults.registry_uri`` of the pipeline settings file (default: pipelines/settings.yaml)."""
    from ..pipelines.settings import load_settings

    return load_settings(settings).defaults.registry_uri


def register(subparsers, common: argparse.ArgumentParser) -> None:
    from ..registry.commands import location_arguments
    from .oip import Limits

    p = subparsers.add_parser("serve", parents=[common], description=SERVE_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              help="serve the registry's champion over HTTP (Open Inference Protocol), following "
                                   "promotions and rollbacks")
    location_arguments(p, settings_registry)
    p.add_argument("--adapter", default=CHAMPION,
                   help=f"what to serve (default {CHAMPION}, followed as it moves); a fixed registry:<version>, "
                        "export folder or adapter folder is loaded once and never polled")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                   help="run the adapter with PyTorch or the exported ONNX graph through onnxruntime (default torch)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--poll-seconds", type=float, default=30.0,
                   help="how often to read the champion again (default 30; 0: never)")
    limits = Limits()
    p.add_argument("--max-image-bytes", type=int, default=limits.max_image_bytes,
                   help=f"largest condition image a request may send, in bytes (default {limits.max_image_bytes})")
    p.add_argument("--max-image-pixels", type=int, default=limits.max_image_pixels,
                   help=f"largest condition image in pixels, width x height (default {limits.max_image_pixels})")
    p.set_defaults(func=serve)


class RegistryChampion:
    """What the watcher needs: ``find()`` (the champion, from the registry's history) and
    ``load(version)`` (the adapter verified and loaded, on the base model loaded once)."""

    def __init__(self, cfg: Any, ref: str, runtime: str, registry: Optional[str], model_name: str):
        self.cfg, self.ref, self.runtime, self.registry, self.model_name = cfg, ref, runtime, registry, model_name
        self.base = None

    @property
    def follows(self) -> bool:
        return self.ref == CHAMPION

    def find(self):
        from ..registry.pointer import champion
        from .watch import Champion

        if not self.follows:
            return Champion(self.ref)
        served = champion(self.registry, self.model_name, self.cfg)
        return Champion(served.record.version, served.record.generation, tuple(served.warnings))

    def load(self, version: str):
        from ..errors import ModelError
        from .engine import Engine, load_adapter, load_base
        from .watch import Unavailable

        ref = f"registry:{version}" if self.follows else self.ref
        try:
            adapter = load_adapter(ref, self.cfg, self.runtime, registry=self.registry, model_name=self.model_name)
        except Exception as exc:
            if unreachable(exc):
                raise Unavailable(str(exc)) from exc
            raise
        wanted = adapter.base_reference(self.cfg.model)
        if self.base is None:
            logger.info("loading the base model %s", wanted.path)
            self.base = load_base(self.cfg, wanted)
        elif not _same_base(self.base.ref, wanted):
            raise ModelError(f"version {adapter.version!r} was trained on base model {wanted.path} "
                             f"({wanted.config_hash}), this server runs {self.base.ref.path} "
                             f"({self.base.ref.config_hash}): restart the server to change base models")
        engine = Engine(self.base, adapter)
        return engine, {**adapter.describe(), "size_multiple": engine.size_multiple}


def unreachable(exc: BaseException) -> bool:
    """Whether a load failed for want of the store (connection, timeout, credentials, a plain
    storage error) rather than because of the version: a file that does not match its manifest, a
    key outside its prefix, a version not published or a model that cannot load is a verdict,
    never retried."""
    from ..storage.client import StorageSetupError
    from ..storage.uris import ConcurrentPublish, IntegrityError, NotPublished, StorageError, UnsafePath

    if isinstance(exc, (IntegrityError, NotPublished, UnsafePath, ConcurrentPublish)):
        return False
    return type(exc) in (StorageError, StorageSetupError) or isinstance(exc, (ConnectionError, TimeoutError))


def _same_base(a: Any, b: Any) -> bool:
    if a.config_hash and b.config_hash:
        return a.config_hash == b.config_hash
    return a.path.rstrip("/") == b.path.rstrip("/")


def serve(args: argparse.Namespace, cfg: Any) -> int:
    from ..errors import UsageError
    from ..registry.actions import registry_uri
    from .oip import Limits
    from .server import ServingState, build_app, run
    from .watch import ChampionWatcher

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"t2iops serve needs fastapi and uvicorn ({exc.name} is missing): "
                         "pip install 't2iops[serve]'") from None
    if args.poll_seconds < 0:
        raise UsageError(f"--poll-seconds {args.poll_seconds}: give 0 (never) or more")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: give a port from 0 to 65535")
    _check_address(args.host, args.port)
    registry = registry_uri(args) if args.adapter.startswith("registry:") else None
    source = RegistryChampion(cfg, args.adapter, args.runtime, registry, args.model_name)
    watcher = ChampionWatcher(source.find, source.load, args.poll_seconds if source.follows else 0)
    limits = Limits(max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels)
    about = {"adapter_ref": args.adapter, "registry": registry, "runtime": args.runtime}
    state = ServingState(args.model_name, watcher, limits, about)
    app = build_app(state)
    watcher.start()
    following = f", following the champion of {registry} every {args.poll_seconds:g} s" if source.follows else ""
    sys.stderr.write(f"t2iops serve: http://{args.host}:{args.port}/v2/models/{args.model_name} "
                     f"(adapter {args.adapter}{following}); not ready until it has loaded\n")
    try:
        run(app, args.host, args.port)
    except SystemExit as exc:  # uvicorn's own start-up failure (it logged why): our exit code for a failed command
        raise SystemExit(1 if exc.code else 0) from None
    finally:
        watcher.stop()
    return 0


def _check_address(host: str, port: int) -> None:
    """One line naming the address when it cannot be bound, before anything is loaded."""
    import socket

    from ..errors import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"--host {host}: {exc.strerror or exc}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}): "
                             "choose another --port, or stop what listens there") from None
