"""The compiled pipeline run end to end with every step in the project image (kfp.local's
DockerRunner, `t2iops pipeline run-local --runner docker`), data and the tiny SDXL base read from
the loopback S3 server, outputs published to it; the same run under the subprocess runner gives
the same adapter, bit for bit. Then a train container killed after a checkpoint and started
again with its exact command resumes from that checkpoint on S3, and ends where an
uninterrupted run ends."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import boto3
import pytest

from t2iops.config import load_config
from t2iops.data.synth import synthesize
from t2iops.pipelines.containers import RUN_LABEL
from t2iops.pipelines.local import LOCAL_BUCKET, SMOKE_OVERRIDES, run_local
from t2iops.presets import preset_config

# One worker runs the module, so the subprocess reference run is made once.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.s3, pytest.mark.xdist_group("pipeline-docker")]

# The smoke sizes, with enough training steps and checkpoints to kill a run mid-way.
OVERRIDES = {**SMOKE_OVERRIDES, "train.max_steps": 30, "train.checkpoint_every": 5,
             # over the toy preset: cubic timesteps, guidance 5, one conditioning scale, no gate
             "train.timestep_sampling": "cubic", "evaluate.guidance_scale": 5.0, "evaluate.conditioning_scales": [1.0],
             "evaluate.gate.min_circle_iou": None}
# Files of a published version that differ between two runs by design: provenance (run paths,
# the S3 server's port, times, the step's working directory).
PROVENANCE = {"lineage.json", "export.json", "README.md", "config.resolved.yaml"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_sdxl_path):
    data = tmp_path_factory.mktemp("data") / "circles"
    synthesize(str(data), load_config(None, {k: v for k, v in OVERRIDES.items() if k.startswith("data.synth")}))
    return data, tiny_sdxl_path


def run(work: Path, endpoint: str, inputs, runner: str, image: str | None = None, prefix: str = ""):
    data, base = inputs
    params = {"data_source": str(data), "git_sha": "c0ffee" * 6 + "abcd",
              "run_root": f"s3://{LOCAL_BUCKET}/{prefix or work.name}/runs",
              "registry_uri": f"s3://{LOCAL_BUCKET}/{prefix or work.name}/registry"}
    return run_local(work, preset_config("toy", OVERRIDES), params, s3=endpoint, base_model=base, smoke=False,
                     runner=runner, image=image)


def published(work: Path) -> dict[str, str]:
    (version,) = [p for p in (work / "registry-copy" / "t2i-adapter").iterdir() if p.is_dir()]
    files = json.loads((version / "_manifest.json").read_text())["files"]
    return {name: entry["sha256"] for name, entry in files.items()}


def trained_adapter(work: Path) -> str:
    (weights,) = work.glob("kfp-root/*/train-adapter/model/adapter/diffusion_pytorch_model.safetensors")
    return hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def subprocess_run(tmp_path_factory, s3_server, inputs):
    work = tmp_path_factory.mktemp("subprocess") / "work"
    outcome = run(work, s3_server, inputs, "subprocess")
    assert outcome.gate_passed
    return work


def test_pipeline_in_containers_publishes_the_same_adapter_as_the_subprocess_run(
        image, docker, s3_server, inputs, subprocess_run, tmp_path, capfd):
    work = tmp_path / "docker"
    capfd.readouterr()
    outcome = run(work, s3_server, inputs, "docker", image)
    printed = capfd.readouterr().out
    assert outcome.gate_passed and outcome.registry_uri == f"s3://{LOCAL_BUCKET}/docker/registry"
    in_containers, in_subprocesses = published(work), published(subprocess_run)
    assert set(in_containers) == set(in_subprocesses)
    assert {"adapter.onnx", "adapter/diffusion_pytorch_model.safetensors", "metrics.json"} <= set(in_containers)
    differ = {name for name in in_containers if in_containers[name] != in_subprocesses[name]}
    assert differ <= PROVENANCE, f"outputs differ beyond provenance: {sorted(differ - PROVENANCE)}"
    card = json.loads(next((work / "registry-copy" / "t2i-adapter").glob("*/export.json")).read_text())
    assert card["git"]["commit"] == "c0ffee" * 6 + "abcd"  # from the run, not the step's (absent) checkout
    assert card["training_data"]["pulled"]["source"].startswith(f"s3://{LOCAL_BUCKET}/data/")
    # The steps really ran in the image (kfp's runner names it once per task): pull, validate, an
    # encode shard, merge, train, two evaluation shards, merge, export, publish; each container
    # is gone when its step ended.
    assert printed.count(f"Found image {image!r}") == 10, printed[-3000:]
    assert not docker.containers.list(all=True, filters={"label": f"{RUN_LABEL}={work.name}"})


class TrainKiller(threading.Thread):
    """Waits for the run's train container and its first complete checkpoint on S3, records the
    container's command, environment and mounts, then kills it."""

    def __init__(self, docker, endpoint: str, label: str, run_prefix: str):
        super().__init__(daemon=True)
        self.docker, self.label, self.run_prefix = docker, label, run_prefix
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.spec: dict | None = None
        self.checkpoints_at_kill: list[str] = []
        self.error: str | None = None

    def checkpoints(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=LOCAL_BUCKET, Prefix=self.run_prefix)
        return sorted({k["Key"].split("/checkpoints/")[1].split("/")[0] for k in listing.get("Contents", [])
                       if "/train/checkpoints/" in k["Key"] and k["Key"].endswith("/_manifest.json")})

    def run(self) -> None:
        deadline = time.monotonic() + 600
        container = None
        while time.monotonic() < deadline:
            if container is None:
                found = [c for c in self.docker.containers.list(filters={"label": f"{RUN_LABEL}={self.label}"})
                         if "train_adapter" in " ".join(c.attrs["Config"]["Cmd"])]
                container = found[0] if found else None
            if container is not None and self.checkpoints():
                self.spec = {"image": container.attrs["Config"]["Image"], "command": container.attrs["Config"]["Cmd"],
                             "environment": container.attrs["Config"]["Env"], "user": container.attrs["Config"]["User"],
                             "volumes": {m["Source"]: {"bind": m["Destination"], "mode": "rw"}
                                         for m in container.attrs["Mounts"]}}
                container.kill()
                self.checkpoints_at_kill = self.checkpoints()
                return
            time.sleep(0.05)
        self.error = "no train container with a checkpoint within 600 s"


def test_a_killed_train_container_resumes_from_its_s3_checkpoint(image, docker, s3_server, inputs, subprocess_run,
                                                                 tmp_path):
    work = tmp_path / "killed"
    killer = TrainKiller(docker, s3_server, work.name, "killed/runs/")
    killer.start()
    with pytest.raises(RuntimeError):  # kfp.local: the train task failed (its container was killed)
        run(work, s3_server, inputs, "docker", image)
    killer.join(timeout=60)
    assert killer.error is None and killer.spec is not None, killer.error
    last = killer.checkpoints_at_kill[-1]
    assert last < "step-000030", f"the run was not killed mid-way: {killer.checkpoints_at_kill}"

    # The task's retry: the same container command (same executor input, same output URI, so the
    # same checkpoint prefix), started afresh.
    spec = killer.spec
    again = docker.containers.run(spec["image"], spec["command"], environment=spec["environment"],
                                  user=spec["user"] or None, volumes=spec["volumes"], network_mode="host", detach=True)
    try:
        status = again.wait(timeout=600)
        logs = again.logs().decode()
    finally:
        again.remove(force=True)
    assert status["StatusCode"] == 0, logs[-4000:]
    assert f"/train/checkpoints/{last} at step" in logs and "resumed from s3://" in logs, logs[-4000:]
    assert trained_adapter(work) == trained_adapter(subprocess_run), "resumed training ended elsewhere"
