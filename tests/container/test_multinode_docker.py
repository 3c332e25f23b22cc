"""Multi-node training in containers, as two pods of a TrainJob run it: two containers of the
project image on one user-defined docker network (their own addresses, names resolved by the
network's DNS), each running the TrainJob's exact per-rank command
(:func:`t2iops.pipelines.trainjob.rank_command`) with the variables ``mpirun`` gives a rank. The
encode cache, checkpoints and the adapter live on an S3 server in a third container on the same
network; the nodes share nothing else but the read-only base model (a model volume). One node is
killed after a checkpoint, both are started afresh (new containers, empty disks), the run resumes
and ends where one process ends, within the tolerance of the network-namespace test."""
from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_train_distributed import cache, overrides, plain_run, weights  # noqa: E402,F401

from t2iops.config import load_config  # noqa: E402
from t2iops.storage import download_dir  # noqa: E402
from t2iops.pipelines.settings import PipelineSettings  # noqa: E402
from t2iops.pipelines.trainjob import MASTER_PORT, rank_command, spec_from_settings  # noqa: E402
from t2iops.presets import preset_config  # noqa: E402

pytest.importorskip("deepspeed")
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.distributed]

BUCKET = "t2iops-pods"
STEPS = ("train.max_steps=8",)  # checkpoints at 2, 4, 6, 8: room to kill a node mid-run
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class Pods:
    """A docker network with an S3 server and the rank containers started on it."""

    def __init__(self, docker, image: str):
        self.docker, self.image, self.tag = docker, image, uuid.uuid4().hex[:6]
        self.network = docker.networks.create(f"t2i-{self.tag}", driver="bridge")
        self.started = []

    def start(self, name: str, command: list[str], env: dict[str, str], volumes: dict | None = None):
        container = self.docker.containers.run(self.image, command, name=f"t2i-{self.tag}-{name}", detach=True,
                                               network=self.network.name, environment=env, volumes=volumes or {})
        self.started.append(container)
        return container

    def address(self, container) -> str:
        container.reload()
        return container.attrs["NetworkSettings"]["Networks"][self.network.name]["IPAddress"]

    def remove(self) -> None:
        for container in self.started:
            try:
                container.remove(force=True)
            except Exception:
                pass
        self.network.remove()


@pytest.fixture()
def pods(docker, image):
    try:
        group = Pods(docker, image)
    except Exception as exc:  # a daemon started without bridge networking (--bridge=none is no obstacle)
        pytest.fail(f"cannot create a user-defined docker network: {exc}")
    yield group
    group.remove()


@pytest.fixture()
def s3(pods):
    """moto's S3 server in a container of its own; (endpoint inside the network, client here)."""
    server = pods.start("s3", ["python", "-m", "moto.server", "-H", "0.0.0.0", "-p", "5000"], CREDENTIALS)
    client = boto3.client("s3", endpoint_url=f"http://{pods.address(server)}:5000", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    deadline = time.monotonic() + 120
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    return f"http://t2i-{pods.tag}-s3:5000", client


def launch(pods, endpoint: str, model: str, attempt: int):
    cfg = preset_config("toy", overrides(model, "train.zero_stage=2", *STEPS))
    spec = spec_from_settings(PipelineSettings(s3_secret=None), run_id="run", namespace="pods", nodes=2, gpus_per_node=1,
                              cache_uri=f"s3://{BUCKET}/cache", out_uri=f"s3://{BUCKET}/run/train",
                              config_yaml=cfg.to_yaml())
    nodes = []
    for node in (0, 1):
        env = {**CREDENTIALS, "OMPI_COMM_WORLD_RANK": str(node), "OMPI_COMM_WORLD_LOCAL_RANK": "0",
               "OMPI_COMM_WORLD_SIZE": "2", "MASTER_ADDR": f"t2i-{pods.tag}-a{attempt}-node0",
               "MASTER_PORT": str(MASTER_PORT), "T2IOPS_CONFIG_YAML": spec.config_yaml, "AWS_ENDPOINT_URL": endpoint,
               "GLOO_SOCKET_IFNAME": "eth0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        nodes.append(pods.start(f"a{attempt}-node{node}", rank_command(spec), env, {model: {"bind": model, "mode": "ro"}}))
    return nodes


def checkpoints(client) -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="run/train/checkpoints/")
    return sorted({o["Key"].split("/")[3] for o in listing.get("Contents", []) if o["Key"].endswith("/_manifest.json")})


def upload(client, folder: Path, prefix: str) -> None:
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), BUCKET, f"{prefix}/{f.relative_to(folder).as_posix()}")


def test_two_pods_on_a_docker_network_resume_after_one_dies_and_match_one_process(
        pods, s3, cache, tiny_sdxl_path, tmp_path, monkeypatch):  # noqa: F811
    endpoint, client = s3
    for name, value in CREDENTIALS.items():  # the project's reader below takes the standard chain
        monkeypatch.setenv(name, value)
    upload(client, cache, "cache")
    plain = plain_run(cache, tmp_path / "plain", tiny_sdxl_path, *STEPS)

    # 1. Both pods start; node1 is killed once a checkpoint is complete on S3, and node0, having
    #    lost its peer, fails too.
    nodes = launch(pods, endpoint, tiny_sdxl_path, attempt=1)
    deadline = time.monotonic() + 600
    while not checkpoints(client):
        assert time.monotonic() < deadline, "no checkpoint within 600 s: " + nodes[0].logs().decode()[-3000:]
        for node in nodes:
            node.reload()
            assert node.status == "running", node.logs().decode()[-4000:]
        time.sleep(0.1)
    nodes[1].kill()
    assert nodes[1].wait(timeout=60)["StatusCode"] != 0
    assert nodes[0].wait(timeout=300)["StatusCode"] != 0, "node0 should fail when its peer dies"
    saved = checkpoints(client)
    assert saved and saved[-1] < "step-000008", f"the run was not killed mid-way: {saved}"

    # 2. The job starts both pods again with the same command, on fresh disks: they resume from the
    #    last checkpoint and end where one process ends.
    nodes = launch(pods, endpoint, tiny_sdxl_path, attempt=2)
    for node in nodes:
        assert node.wait(timeout=600)["StatusCode"] == 0, node.logs().decode()[-4000:]
        assert f"resumed from s3://{BUCKET}/run/train/checkpoints/{saved[-1]}" in node.logs().decode()
    resumed = tmp_path / "resumed"
    here = load_config(overrides=[f"storage.endpoint_url={client.meta.endpoint_url}"])
    download_dir(f"s3://{BUCKET}/run/train", resumed, here)  # the project's reader: through the manifest
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["optimizer"] == "deepspeed-zero2" and summary["world_size"] == 2
    assert summary["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    a, b = weights(tmp_path / "plain"), weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)  # Adam amplifies rounding near g=0
