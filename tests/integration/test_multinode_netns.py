"""Multi-node training for real on one machine: two "nodes", each its own network namespace
joined by a veth pair, each running the exact per-rank command of the TrainJob
(:func:`t2iops.pipelines.trainjob.rank_command`) with the variables ``mpirun`` gives a rank.
Rendezvous and gloo traffic cross the veth link; the encode cache, checkpoints and the final
adapter live on an S3 server inside the first node's namespace, as on a cluster where nodes
share nothing but the network. Needs root (``ip netns add``); skipped where namespaces cannot
be created."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from t2iops.pipelines.settings import PipelineSettings
from t2iops.pipelines.trainjob import MASTER_PORT, rank_command, spec_from_settings, trainjob_object
from t2iops.presets import preset_config

# The 2-rank test's data, overrides, one-process reference run and tolerance.
from test_train_distributed import cache, overrides, plain_run, weights  # noqa: F401

pytest.importorskip("deepspeed")
pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SUBNET = "10.231.7"  # only inside the two namespaces this test creates
S3_PORT = 5000
BUCKET = "t2iops-netns"
STEPS = ("train.max_steps=8",)  # checkpoints at 2, 4, 6, 8: room to kill a node mid-run


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class TwoNodes:
    """Two network namespaces, ``node0`` (10.231.7.1) and ``node1`` (10.231.7.2), one veth link."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.names = [f"t2i-{tag}-n0", f"t2i-{tag}-n1"]
        self.links = [f"t2v{tag}a", f"t2v{tag}b"]
        self.addrs = [f"{SUBNET}.1", f"{SUBNET}.2"]
        self.started: list[subprocess.Popen] = []

    def create(self) -> None:
        for ns in self.names:
            done = _ip("netns", "add", ns)
            if done.returncode != 0:
                self.remove()
                pytest.skip(f"cannot create a network namespace (`ip netns add` needs root/CAP_SYS_ADMIN): "
                            f"{done.stderr.strip()}")
        steps = [("link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1])]
        for ns, link, addr in zip(self.names, self.links, self.addrs):
            steps += [("link", "set", link, "netns", ns), ("-n", ns, "addr", "add", f"{addr}/24", "dev", link),
                      ("-n", ns, "link", "set", link, "up"), ("-n", ns, "link", "set", "lo", "up")]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, (step, done.stderr)

    def remove(self) -> None:
        for proc in self.started:  # a failed test leaves no rank or server behind
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        for ns in self.names:
            _ip("netns", "delete", ns)  # takes its end of the veth pair with it

    def popen(self, node: int, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.names[node], *argv], env=env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc


@pytest.fixture(scope="module")
def nodes():
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed (Debian package iproute2)")
    pair = TwoNodes()
    pair.create()
    yield pair
    pair.remove()


@pytest.fixture(scope="module")
def s3_in_node0(nodes, tmp_path_factory):
    """A moto S3 server listening on node0's veth address, reachable from both nodes."""
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    server = nodes.popen(0, [sys.executable, "-m", "moto.server", "-H", nodes.addrs[0], "-p", str(S3_PORT)], env, log)
    endpoint = f"http://{nodes.addrs[0]}:{S3_PORT}"
    try:
        _s3(nodes, endpoint, f"""
            import time
            for _ in range(100):
                try:
                    s3.create_bucket(Bucket={BUCKET!r}); break
                except Exception:
                    time.sleep(0.2)
            else:
                raise SystemExit("S3 server did not come up")""")
        yield endpoint
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _s3(nodes: TwoNodes, endpoint: str, body: str) -> str:
    """Run a boto3 snippet (``s3`` is the client) inside node1's namespace; returns stdout."""
    code = "import boto3\ns3 = boto3.client('s3', endpoint_url=%r, region_name='us-east-1')\n" % endpoint
    code += textwrap.dedent(body)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    done = subprocess.run(["ip", "netns", "exec", nodes.names[1], sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def upload(nodes, endpoint, folder: Path, prefix: str) -> None:
    _s3(nodes, endpoint, f"""
        from pathlib import Path
        root = Path({str(folder)!r})
        for f in sorted(root.rglob('*')):
            if f.is_file():
                s3.upload_file(str(f), {BUCKET!r}, {prefix!r} + '/' + f.relative_to(root).as_posix())""")


def download(nodes, endpoint, prefix: str, folder: Path) -> None:
    """Fetch a published output as a reader does, through its manifest (its files live under
    versioned keys until the manifest names them)."""
    _s3(nodes, endpoint, f"""
        from t2iops import storage
        from t2iops.config import StorageConfig
        storage.download_dir('s3://{BUCKET}/{prefix}', {str(folder)!r}, StorageConfig(endpoint_url={endpoint!r}))""")


def launch(nodes, endpoint, run: str, model: str, scratch: Path, *extra: str, attempt: int) -> list[subprocess.Popen]:
    """Start one rank per node, each with what mpirun would export to it and its own scratch and
    download cache (DeepSpeed's compiled CPU ops stay shared: HOME, TORCH_EXTENSIONS_DIR)."""
    cfg = preset_config("toy", overrides(model, "train.zero_stage=2", *STEPS, *extra))
    spec = spec_from_settings(PipelineSettings(s3_secret=None), run_id=run, namespace="netns", nodes=2, gpus_per_node=1,
                              cache_uri=f"s3://{BUCKET}/cache", out_uri=f"s3://{BUCKET}/{run}/train",
                              config_yaml=cfg.to_yaml())
    command = rank_command(spec)
    assert shlex.join(command) in trainjob_object(spec)["spec"]["trainer"]["command"][2]  # what mpirun starts
    procs = []
    for node in (0, 1):
        home = scratch / f"{run}-{attempt}-node{node}"  # a restarted pod gets a fresh disk
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMPI_COMM_WORLD_RANK": str(node), "OMPI_COMM_WORLD_LOCAL_RANK": "0",
               "OMPI_COMM_WORLD_SIZE": "2", "MASTER_ADDR": nodes.addrs[0], "MASTER_PORT": str(MASTER_PORT),
               "T2IOPS_CONFIG_YAML": spec.config_yaml, "AWS_ENDPOINT_URL": endpoint,
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               # In a pod the hostname resolves to the pod's address; here gloo is told the link.
               "GLOO_SOCKET_IFNAME": nodes.links[node], "TMPDIR": str(home / "tmp"),
               "T2IOPS_CACHE": str(home / "cache"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        procs.append(nodes.popen(node, command, env, scratch / f"{run}-{attempt}-node{node}.log"))
    return procs


def wait_all(procs, scratch: Path, log_prefix: str, timeout: float = 600) -> None:
    for node, proc in enumerate(procs):
        rc = proc.wait(timeout=timeout)
        assert rc == 0, (scratch / f"{log_prefix}-node{node}.log").read_text()[-4000:]


def checkpoints_of(nodes, endpoint, run: str) -> list[str]:
    listing = _s3(nodes, endpoint, f"""
        out = s3.list_objects_v2(Bucket={BUCKET!r}, Prefix='{run}/train/checkpoints/')
        print('\\n'.join(o['Key'] for o in out.get('Contents', [])))""")
    return sorted({k.split("/")[3] for k in listing.split() if k.endswith("/_manifest.json")})


def first_checkpoint_watcher(nodes, endpoint, run: str, log: Path) -> subprocess.Popen:
    """A process in node1's namespace that exits as soon as the run's first complete checkpoint
    is on S3 (one process polling quickly, not one process per poll)."""
    code = textwrap.dedent(f"""
        import boto3, time
        s3 = boto3.client('s3', endpoint_url={endpoint!r}, region_name='us-east-1')
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            out = s3.list_objects_v2(Bucket={BUCKET!r}, Prefix='{run}/train/checkpoints/')
            if any(o['Key'].endswith('/_manifest.json') for o in out.get('Contents', [])):
                raise SystemExit(0)
            time.sleep(0.1)
        raise SystemExit(1)""")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return nodes.popen(1, [sys.executable, "-c", code], env, log)


def test_two_nodes_over_veth_resume_after_a_node_dies_exactly_and_match_one_process(
        nodes, s3_in_node0, cache, tiny_sdxl_path, tmp_path):  # noqa: F811
    upload(nodes, s3_in_node0, cache, "cache")
    plain = plain_run(cache, tmp_path / "plain", tiny_sdxl_path, *STEPS)

    # 1. Both nodes start; node1 is killed once a checkpoint is complete on S3, and node0, having
    #    lost its peer, fails too.
    watcher = first_checkpoint_watcher(nodes, s3_in_node0, "run", tmp_path / "watcher.log")
    procs = launch(nodes, s3_in_node0, "run", tiny_sdxl_path, tmp_path, attempt=1)
    assert watcher.wait(timeout=660) == 0, "no checkpoint within 600 s"
    assert procs[1].poll() is None, (tmp_path / "run-1-node1.log").read_text()[-4000:]
    os.killpg(procs[1].pid, signal.SIGKILL)
    assert procs[1].wait(timeout=60) != 0
    assert procs[0].wait(timeout=300) != 0, "node0 should fail when its peer dies"
    saved = checkpoints_of(nodes, s3_in_node0, "run")
    assert saved and saved[-1] < "step-000008", f"the run was not killed mid-way: {saved}"

    # 2. The job restarts both nodes with the same command: they resume from the last checkpoint
    #    and end exactly where the same job run without a failure ends, bit for bit.
    procs = launch(nodes, s3_in_node0, "run", tiny_sdxl_path, tmp_path, attempt=2)
    wait_all(procs, tmp_path, "run-2")
    for node in (0, 1):
        log = (tmp_path / f"run-2-node{node}.log").read_text()
        assert f"resumed from s3://{BUCKET}/run/train/checkpoints/{saved[-1]}" in log
    download(nodes, s3_in_node0, "run/train", tmp_path / "resumed")
    procs = launch(nodes, s3_in_node0, "whole", tiny_sdxl_path, tmp_path, attempt=1)
    wait_all(procs, tmp_path, "whole-1")
    download(nodes, s3_in_node0, "whole/train", tmp_path / "whole")
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert resumed["optimizer"] == "deepspeed-zero2" and resumed["world_size"] == 2
    assert resumed["losses"] == whole["losses"]
    b, c = weights(tmp_path / "resumed"), weights(tmp_path / "whole")
    assert all(torch.equal(b[k], c[k]) for k in c), [k for k in c if not torch.equal(b[k], c[k])]

    # 3. And the two-node job trains what one process trains: the same losses at every step.
    #    Its weights are not compared element by element with the one process here: over these
    #    8 steps (the 2-rank test, which does compare them, runs 4) two of the 9,216 weights of
    #    one tensor sit near g=0, where Adam's m/sqrt(v) turns float reassociation in the ranks'
    #    reduction into an lr-sized step (measured 1.4e-4 off against that test's 1e-4 tolerance,
    #    with or without the failure). What this test is about, the resume, is checked exactly
    #    above, against the same two-node job.
    assert whole["losses"] == pytest.approx(plain["losses"], rel=1e-5)
