"""The champion watcher's rules, with the champion and the loader handed in as plain functions
(the HTTP server and the real registry are in tests/integration/test_serve_swap.py)."""
from __future__ import annotations

import threading

from t2iops.serve.watch import Champion, ChampionWatcher, Unavailable


class Registry:
    """What ``find`` reads and what ``load`` can load: a champion and a set of broken versions."""

    def __init__(self):
        self.champion = None
        self.broken: set[str] = set()
        self.down = False  # the store cannot be reached
        self.loads: list[str] = []
        self.gate = None  # a threading.Event load waits on, to hold a load half-way

    def find(self) -> Champion:
        if self.champion is None:
            raise LookupError("registry has no champion yet")
        return Champion(*self.champion)

    def load(self, version: str):
        self.loads.append(version)
        if self.gate is not None:
            self.gate.wait(10)
        if self.down:
            raise Unavailable(f"endpoint http://127.0.0.1:9 cannot be reached while loading {version!r}")
        if version in self.broken:
            raise ValueError(f"version {version!r} fails verification: weights.safetensors: sha256 differs")
        return f"engine-{version}-{len(self.loads)}", {"version": version, "sha256": f"sha-{version}"}


def test_not_ready_then_follows_promotions_and_rollbacks():
    reg = Registry()
    watcher = ChampionWatcher(reg.find, reg.load, poll_seconds=1)
    assert watcher.poll() is None and "no champion yet" in watcher.last_error
    reg.champion = ("v1", 1)
    assert watcher.poll().version == "v1" and watcher.last_error is None
    reg.champion = ("v2", 2)
    assert watcher.poll().engine == "engine-v2-2"
    reg.champion = ("v1", 3)  # rolled back: v1 is loaded (and verified) again
    active = watcher.poll()
    assert (active.version, active.generation, reg.loads) == ("v1", 3, ["v1", "v2", "v1"])
    assert watcher.poll() is active and reg.loads == ["v1", "v2", "v1"]  # nothing moved: nothing loaded


def test_a_version_that_fails_is_refused_once_and_the_current_one_keeps_serving():
    reg = Registry()
    watcher = ChampionWatcher(reg.find, reg.load, poll_seconds=1)
    reg.champion = ("v1", 1)
    serving = watcher.poll()
    reg.broken.add("v3")
    reg.champion = ("v3", 2)
    assert watcher.poll() is serving
    assert watcher.poll() is serving and reg.loads == ["v1", "v3"]  # the same move is not tried again
    (refusal,) = watcher.refused
    assert refusal["version"] == "v3" and refusal["generation"] == 2 and "sha256 differs" in refusal["error"]
    assert watcher.state()["serving"]["version"] == "v1"
    reg.broken.clear()
    reg.champion = ("v3", 3)  # the next move of the champion is tried
    assert watcher.poll().version == "v3"


def test_a_request_keeps_the_engine_it_started_with_while_the_next_loads():
    reg = Registry()
    watcher = ChampionWatcher(reg.find, reg.load, poll_seconds=1)
    reg.champion = ("v1", 1)
    watcher.poll()
    in_flight = watcher.active()  # what a request takes when it starts
    reg.champion, reg.gate = ("v2", 2), threading.Event()
    poller = threading.Thread(target=watcher.poll)
    poller.start()
    while reg.loads[-1:] != ["v2"]:
        pass
    assert watcher.active().version == "v1"  # v2 is loading: v1 still serves new requests
    reg.gate.set()
    poller.join(10)
    assert watcher.active().version == "v2" and in_flight.version == "v1" and in_flight.engine == "engine-v1-1"


def test_a_fixed_adapter_is_loaded_once_by_the_thread():
    reg = Registry()
    reg.champion = ("runs/export", None)
    watcher = ChampionWatcher(reg.find, reg.load, poll_seconds=0).start()
    watcher._thread.join(10)
    assert not watcher._thread.is_alive() and watcher.active().version == "runs/export" and watcher.polls == 1


def test_a_version_the_store_cannot_deliver_now_is_tried_again_not_refused():
    reg = Registry()
    watcher = ChampionWatcher(reg.find, reg.load, poll_seconds=1)
    reg.champion = ("v1", 1)
    serving = watcher.poll()
    reg.champion, reg.down = ("v2", 2), True
    assert watcher.poll() is serving and watcher.poll() is serving
    assert watcher.refused == [] and "cannot be reached" in watcher.state()["last_error"]
    assert reg.loads == ["v1", "v2", "v2"]  # each poll tries the move again
    reg.down = False
    assert watcher.poll().version == "v2" and watcher.refused == []


def test_only_the_stores_absence_counts_as_unreachable():
    from t2iops.registry.versions import RegistryIntegrityError
    from t2iops.serve.serve_command import unreachable
    from t2iops.storage.client import StorageSetupError
    from t2iops.storage.uris import IntegrityError, NotPublished, StorageError

    assert unreachable(StorageError("s3://b/r/v2 (endpoint http://127.0.0.1:9): cannot be reached"))
    assert unreachable(StorageSetupError("no usable AWS credentials")) and unreachable(ConnectionResetError())
    for verdict in (IntegrityError("sha256 differs"), NotPublished("no manifest"),
                    RegistryIntegrityError("fails verification"), ValueError("bad config")):
        assert not unreachable(verdict), verdict
