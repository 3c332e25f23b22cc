"""``t2iops serve``: the registry's champion behind the Open Inference Protocol (KServe v2 REST).

The routes are the protocol's (:mod:`.oip` holds the JSON shapes)::

    GET  /v2/health/live            200 while the process runs
    GET  /v2/health/ready           200 once an adapter serves, 503 while loading
    GET  /v2                        server metadata
    GET  /v2/models/<name>          model metadata; its ``parameters`` say what is served and what was refused
    GET  /v2/models/<name>/ready    200 / 503, as /v2/health/ready
    POST /v2/models/<name>/infer    prompt + condition -> image (base64 PNG) + the adapter version
    POST /generate                  the same as plain JSON fields -> image/png (X-Adapter-Version header)

Why not KServe's Python SDK (``kserve`` on PyPI), which serves this protocol itself: its release
0.21.0 requires ``pandas<3`` and ``psutil<6``, and the project's lock pins pandas 3 and psutil 7
for the rest of the stack. The protocol is small (the routes above), so it is served over FastAPI
and uvicorn, which fit the lock; a KServe ``InferenceService`` runs this server as a custom
predictor (infra/k8s/serving) and its probes and clients see the same protocol.

Generation is CPU/GPU-bound and runs in a worker thread (the engine serialises its use of the
base model); the event loop keeps answering health checks meanwhile. Each request takes the
active engine once (:meth:`~.watch.ChampionWatcher.active`) and finishes with it, so a swap to a
newly promoted version never drops or splits a request in flight.
"""
# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations
# (``request: Request``), which are local to build_app, at run time.
import logging
import signal
import threading
from typing import Any, Optional

from .. import __version__
from ..errors import T2IError
from . import oip
from .engine import BadRequest
from .watch import ChampionWatcher

logger = logging.getLogger(__name__)

GENERATE_FIELDS = ("prompt", "condition", "negative_prompt", *oip.PARAMETERS)


class ServingState:
    """What the routes read: the model's name, the limits, the watcher (the active engine) and
    counters of requests (per adapter version)."""

    def __init__(self, model_name: str, watcher: ChampionWatcher, limits: oip.Limits, about: Optional[dict] = None):
        self.model_name, self.watcher, self.limits = model_name, watcher, limits
        self.about = dict(about or {})
        self._lock = threading.Lock()
        self.in_flight = 0
        self.generated: dict[str, int] = {}  # adapter version -> images generated
        self.rejected_requests = 0

    def count(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    def done(self, version: str) -> None:
        with self._lock:
            self.generated[version] = self.generated.get(version, 0) + 1

    def metadata(self) -> dict:
        active = self.watcher.active()
        state = {**self.about, **self.watcher.state(), "ready": active is not None, "in_flight": self.in_flight,
                 "generated": dict(self.generated), "rejected_requests": self.rejected_requests}
        return oip.model_metadata(self.model_name, [active.version] if active else [], self.limits, state)


def build_app(state: ServingState):
    """The FastAPI application of the protocol's routes over ``state``."""
    from fastapi import FastAPI

    app = FastAPI(title="t2iops", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    _health_routes(app, state)
    _inference_routes(app, state)
    return app


def _failure(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse(oip.error(message), status_code=status)


def _not_ready(state: ServingState):
    last = state.watcher.refused[-1:] or [{}]
    why = state.watcher.last_error or last[0].get("error") or "loading the base model and the adapter"
    return _failure(503, f"model {state.model_name!r} is not ready: {why}")


def _unknown(state: ServingState, name: str):
    if name != state.model_name:
        return _failure(404, f"unknown model {name!r}: this server serves {state.model_name!r}")
    return None


def _health_routes(app, state: ServingState) -> None:
    """Liveness, readiness and metadata: answered on the event loop, never behind a generation."""
    from fastapi.responses import JSONResponse

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if state.watcher.active() is None:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "t2iops", "version": __version__, "extensions": []}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str):
        return _unknown(state, name) or state.metadata()

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str):
        if wrong := _unknown(state, name):
            return wrong
        active = state.watcher.active()
        if active is None:
            return JSONResponse({"name": name, "ready": False}, status_code=503)
        return {"name": name, "ready": True, "version": active.version}


async def _read(request, state: ServingState) -> dict:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        oip.check_body_size(int(declared), state.limits)
    body = await request.body()
    oip.check_body_size(len(body), state.limits)
    return oip.parse_json(body)


async def _generate(state: ServingState, fields: dict[str, Any]):
    """(the image as PNG bytes, the active engine it came from, the settings used); Nones when
    nothing is loaded yet."""
    from starlette.concurrency import run_in_threadpool

    active = state.watcher.active()  # this request's engine, whatever is swapped in meanwhile
    if active is None:
        return None, None, None

    def work():  # decoding, generating and encoding in a worker thread: the event loop stays free
        request = oip.generate_request(fields, state.limits)
        active.engine.check(request)
        used = active.engine.resolve(request)
        return oip.encode_png(active.engine.generate(request)), used

    png, used = await run_in_threadpool(work)
    state.done(active.version)
    return png, active, used


async def _answer(state: ServingState, handler):
    """Run ``handler``; a bad request is a 4xx naming the problem, anything else a 500: the
    server keeps serving either way."""
    state.count(+1)
    try:
        return await handler()
    except BadRequest as exc:
        state.rejected_requests += 1
        return _failure(413 if isinstance(exc, oip.TooLarge) else 400, str(exc))
    except T2IError as exc:
        logger.error("request failed: %s", exc)
        return _failure(500, str(exc))
    except Exception as exc:  # the traceback goes to the log
        logger.exception("request failed")
        return _failure(500, f"{type(exc).__name__}: {exc}")
    finally:
        state.count(-1)


def _inference_routes(app, state: ServingState) -> None:
    from fastapi import Request
    from fastapi.responses import Response

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        if wrong := _unknown(state, name):
            return wrong

        async def handle():
            fields, request_id = oip.infer_inputs(await _read(request, state))
            png, active, used = await _generate(state, fields)
            if png is None:
                return _not_ready(state)
            settings = {k: used[k] for k in ("scale", "steps", "guidance", "seed", "width", "height")}
            return oip.infer_response(state.model_name, active.describe(), png, request_id, settings)

        return await _answer(state, handle)

    @app.post("/generate")
    async def generate(request: Request):
        async def handle():
            doc = await _read(request, state)
            extra = sorted(set(doc) - set(GENERATE_FIELDS))
            if extra:
                raise BadRequest(extra[0], f"unknown field: the fields are {', '.join(GENERATE_FIELDS)}")
            png, active, used = await _generate(state, doc)
            if png is None:
                return _not_ready(state)
            headers = {"X-Adapter-Version": active.version, "X-Adapter-Sha256": str(active.adapter.get("sha256")),
                       "X-Seed": str(used["seed"])}
            return Response(png, media_type="image/png", headers=headers)

        return await _answer(state, handle)


# Seconds a stopping server gives the requests in flight (infra/k8s/serving sets the pod's grace
# period above this).
GRACEFUL_SHUTDOWN_S = 60


def run(app, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; uvicorn then stops accepting and lets the requests in
    flight finish."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    # uvicorn re-raises the signal that stopped it once it has shut down, with the handler that was
    # there before it started. Python's default for SIGTERM (a Kubernetes pod's stop) kills the
    # process on the spot: no clean-up at exit, so each loaded adapter's local copy would stay in
    # the temporary folder. Turned into a normal exit, status 0: a requested stop that completed.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(0)
