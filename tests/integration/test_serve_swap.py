"""The server follows the registry, through real HTTP (docs/operations.md, section 7):

no champion -> not ready (503) -> promote v1 -> v1 -> promote v2 -> responses name v2 within the
poll interval plus a load, while clients that never stop get no error and never go back to v1 ->
rollback -> v1 -> v3, its weights tampered, made champion by editing the history and the pointer
by hand -> refused (named in the metadata with the file), v1 keeps serving.

A real ``t2iops serve`` process on 127.0.0.1, real ``t2iops registry`` commands on a folder
registry whose versions the export stage and the publish step made."""
from __future__ import annotations

import json
import threading
import time

import pytest

from serve_support import MODEL, Server, cli, export_tiny_adapter, infer_body, publish

pytestmark = pytest.mark.slow

POLL = 0.5
SWAP_WITHIN = 30.0  # seconds: the poll interval plus loading and verifying a version on a loaded machine


def _until(server: Server, version: str, timeout: float = SWAP_WITHIN) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.version() == version:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"still not {version} after {timeout} s:\n{server.log.read_text()[-3000:]}")


class Clients:
    """Requests without pause from ``n`` threads; what each got, in order."""

    def __init__(self, server: Server, n: int = 2):
        self.server, self.seen, self._stop = server, [[] for _ in range(n)], threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, i: int) -> None:
        while not self._stop.is_set():
            status, doc = self.server.json("POST", f"/v2/models/{MODEL}/infer", infer_body(seed=i, steps=2))
            self.seen[i].append((status, doc.get("model_version") or doc.get("error")))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self.threads:
            t.join(120)


def _hand_promote(registry, version: str) -> None:
    """What someone editing the registry by hand does: a history record and the pointer naming
    ``version``, with its manifest's digest, and no verification of its files."""
    from t2iops.hashing import bytes_digest

    root = registry / MODEL
    head = json.loads(sorted((root / "champion-history").glob("*.json"))[-1].read_text())
    record = {**head, "generation": head["generation"] + 1, "action": "promote", "version": version,
              "uri": str(root / version), "previous": head["version"], "stack": [*head["stack"], version],
              "reason": "edited by hand", "decision": None, "writer": "by-hand",
              "manifest_sha256": bytes_digest((root / version / "_manifest.json").read_bytes())}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    (root / "champion-history" / f"{record['generation']:08d}.json").write_text(text)
    (root / "champion.json").write_text(text)


def test_the_server_follows_promote_and_rollback_and_refuses_a_tampered_version(tiny_sd15_path, tmp_path):
    registry = tmp_path / "registry"
    for seed, version in enumerate(("v1", "v2", "v3"), start=1):
        publish(export_tiny_adapter(tiny_sd15_path, tmp_path / version, seed=seed), str(registry), version)
    where = ["--registry", str(registry)]
    observed = []

    server = Server(str(registry), tiny_sd15_path, tmp_path, POLL)
    try:
        # No champion yet: alive, not ready, and an inference request says why.
        server.wait_live()
        assert server.json("GET", "/v2/health/ready")[0] == 503
        assert server.json("GET", f"/v2/models/{MODEL}/ready") == (503, {"name": MODEL, "ready": False})
        status, doc = server.json("POST", f"/v2/models/{MODEL}/infer", infer_body())
        assert status == 503 and "has no champion yet" in doc["error"], doc

        cli("registry", "promote", "v1", *where)
        server.wait_ready()
        observed.append(server.version())

        with Clients(server) as clients:
            time.sleep(1)
            promoted = time.monotonic()
            cli("registry", "promote", "v2", *where)
            _until(server, "v2")
            took = time.monotonic() - promoted  # from the start of the promote command
            time.sleep(1)
        observed.append(server.version())
        for seen in clients.seen:
            versions = [v for _, v in seen]
            assert {s for s, _ in seen} == {200}, seen
            assert "v1" in versions and "v2" in versions, versions
            assert versions == sorted(versions), f"went back to v1 after v2: {versions}"

        cli("registry", "rollback", *where)
        _until(server, "v1")
        observed.append(server.version())

        weights = registry / MODEL / "v3" / "adapter" / "diffusion_pytorch_model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # same size, another sha256
        weights.write_bytes(bytes(data))
        _hand_promote(registry, "v3")
        deadline = time.monotonic() + SWAP_WITHIN
        while time.monotonic() < deadline:
            refused = server.json("GET", f"/v2/models/{MODEL}")[1]["parameters"]["refused"]
            if refused:
                break
            time.sleep(0.2)
        (entry,) = refused
        assert entry["version"] == "v3" and "diffusion_pytorch_model.safetensors" in entry["error"], entry
        assert "sha256" in entry["error"]
        observed.append(server.version())
        meta = server.json("GET", f"/v2/models/{MODEL}")[1]
        assert meta["versions"] == ["v1"] and meta["parameters"]["serving"]["version"] == "v1"
        assert "refused version 'v3'" in server.log.read_text()
    finally:
        code = server.stop()
    # SIGTERM (a pod's stop) ends it cleanly: every adapter it loaded, swapped out or refused has
    # had its local copy removed
    assert (code, server.leftovers()) == (0, []), server.log.read_text()[-2000:]
    print(f"\nobserved versions: {' -> '.join(observed)} (v3 refused: {entry['error']}); v2 served {took:.1f} s "
          f"after its promotion began; {sum(map(len, clients.seen))} requests across the swap, all 200")
    assert observed == ["v1", "v2", "v1", "v1"]
    assert took <= SWAP_WITHIN
