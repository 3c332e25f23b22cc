"""The built image, checked as a release is: who it runs as, what imports and resolves inside it,
that the pipeline compiles from the installed package, that its caches are writable by its user,
that a step works on a read-only root filesystem, and that nothing outside what the Dockerfile
copies (.git, .venv, data, outputs, credentials, the builder's environment) reaches any layer."""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import run_in

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.container


def test_runs_as_uid_1000_and_the_stack_imports_and_resolves(image):
    done = run_in(image, "bash", "-c", "echo uid=$(id -u); t2iops --help >/dev/null && echo help=ok; "
                  "python -c 'import t2iops, kfp, torch, deepspeed, onnxruntime; print(\"torch=\" + torch.__version__)'"
                  " && pip check")
    assert done.returncode == 0, done.stdout + done.stderr
    said = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.split("=")[0] in ("uid", "help", "torch"))
    assert said["uid"] == "1000" and said["help"] == "ok", done.stdout
    lock = dict(line.split("==", 1) for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert said["torch"].split("+")[0] == lock["torch"], f"torch {said['torch']} in the image, {lock['torch']} in the lock"
    assert "No broken requirements found" in done.stdout


def test_pipeline_compiles_from_the_installed_package_not_a_checkout(image):
    """No checkout in the image: the pipeline and components come from the wheel's copy."""
    done = run_in(image, "bash", "-c",
                  "cd /tmp && test -z \"$(ls -A /opt/t2iops/build)\" && python -c 'from t2iops.pipelines.settings import "
                  "find_project_root; print(find_project_root())' && T2IOPS_IMAGE=registry.example/t2iops:test "
                  "t2iops pipeline compile -o /tmp/p.yaml -S model.base_model=s3://models/sdxl-base >/dev/null && cat /tmp/p.yaml",
                  args=("--read-only", "--tmpfs", "/tmp"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    source, compiled = done.stdout.split("\n", 1)
    assert source.endswith("/site-packages/t2iops/_project"), source
    package = next(d for d in yaml.safe_load_all(compiled) if d)
    executors = package["deploymentSpec"]["executors"]
    assert len(executors) >= 8
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/t2iops:test"}
    assert {"config_train", "config_encode", "data_source"} <= set(package["root"]["inputDefinitions"]["parameters"])


def test_caches_are_writable_by_the_image_user(image):
    done = run_in(image, "bash", "-c", 'for d in "$HF_HOME" "$T2IOPS_CACHE" "$TORCH_EXTENSIONS_DIR"; do '
                  'test -n "$d" && touch "$d/probe" && echo "ok $d"; done')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "/var/cache/huggingface", "ok", "/var/cache/t2iops", "ok",
                                   "/var/cache/torch_extensions"]


def test_a_step_works_on_a_read_only_root_with_a_writable_tmp(image, s3_bucket, tmp_path):
    """As pods often run: readOnlyRootFilesystem plus an emptyDir at /tmp. The step downloads its
    dataset from the S3 server, so the download cache (read-only at /var/cache/t2iops) falls
    back to /tmp, saying so."""
    from t2iops.config import load_config
    from t2iops.data.synth import synthesize

    endpoint, bucket = s3_bucket
    cfg = load_config(None, {"storage.endpoint_url": endpoint, "data.synth.count": 6, "data.synth.resolution": 32})
    synthesize(f"s3://{bucket}/circles", cfg)
    env = ("-e", "AWS_ACCESS_KEY_ID=testing", "-e", "AWS_SECRET_ACCESS_KEY=testing", "-e", "AWS_DEFAULT_REGION=us-east-1")
    done = run_in(image, "bash", "-c",
                  f"t2iops data validate --root s3://{bucket}/circles --out /tmp/validated "
                  f"-S storage.endpoint_url={endpoint}",
                  args=("--read-only", "--tmpfs", "/tmp", "--network", "host", *env))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # the stage's one-line result
    assert summary["status"] == "passed" and summary["good"] == 6, summary
    assert "/var/cache/t2iops is not writable; caching under /tmp/t2iops-cache-1000" in done.stderr


SERVE_PROBE = """
import json, subprocess, sys, time, urllib.error, urllib.request
port = sys.argv[1]
server = subprocess.Popen(["t2iops", "serve", "--registry", "/tmp/registry", "--port", port, "--poll-seconds", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
def get(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""
for _ in range(120):
    if get("/v2/health/live")[0] == 200:
        break
    time.sleep(0.5)
print(json.dumps({p: get(p) for p in ("/v2/health/live", "/v2/health/ready", "/v2/models/t2i-adapter")}))
server.terminate()
print(server.communicate(timeout=30)[0][-2000:], file=sys.stderr)
"""


def test_the_model_server_runs_in_the_image(image):
    """`t2iops serve` as the InferenceService starts it, on a read-only root: its HTTP stack is in
    the image, it is live at once and not ready while the registry has no champion to load."""
    from t2iops.ports import free_port

    port = str(free_port())
    done = run_in(image, "bash", "-c", f"mkdir -p /tmp/registry && python -c '{SERVE_PROBE}' {port}",
                  args=("--read-only", "--tmpfs", "/tmp", "--network", "host"), timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["/v2/health/live"][0] == 200, (seen, done.stderr[-2000:])
    assert seen["/v2/health/ready"][0] == 503, seen
    assert seen["/v2/models/t2i-adapter"][0] == 200 and json.loads(seen["/v2/models/t2i-adapter"][1])["versions"] == []
    assert "has no champion yet" in done.stderr, done.stderr[-2000:]


# -- nothing from outside what the Dockerfile copies --------------------------------------
def _tracked_copy(target: Path) -> None:
    from checkout import copy_tracked

    copy_tracked(target, ROOT)


def _plant(context: Path, token: str) -> list[str]:
    """Sentinel files where a careless context would carry them; returns their paths."""
    planted = [".git/config.sentinel", ".venv/lib/sentinel.py", "data/circles/sentinel.txt", "outputs/train/sentinel.json",
               "models/toy-base/sentinel.bin", ".env", "src/t2iops/.env", "src/.aws/credentials", "credentials.json",
               "deploy/service-account.pem", "src/t2iops/__pycache__/sentinel.cpython-311.pyc"]
    for rel in planted:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        (context / rel).write_text(f"AWS_SECRET_ACCESS_KEY={token}\n")
    return planted


def _layers_holding(image: str, token: bytes, min_layers: int = 5) -> list[str]:
    """Every file of every layer of ``docker save``, streamed (an 8 GB image never lands on
    disk): the paths whose content holds the token. Each planted file holds it, so a planted file
    under any name or path is found, and so is the secret written anywhere."""
    hits = []
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    layers = 0
    with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
        for member in outer:
            if not member.isfile():
                continue
            data = outer.extractfile(member)
            head = data.read(512)
            # a layer is a tar: layer.tar in Docker's own format, blobs/sha256/<digest> in OCI's
            if head[257:262] != b"ustar":
                if token in head + data.read():
                    hits.append(f"{member.name} holds the token")
                continue
            layers += 1
            with tarfile.open(fileobj=_Prefixed(head, data), mode="r|") as layer:
                for entry in layer:
                    if not entry.isfile():
                        continue
                    body, tail = layer.extractfile(entry), b""
                    for chunk in iter(lambda: body.read(1 << 20), b""):
                        if token in tail + chunk:
                            hits.append(f"{member.name}: {entry.name}")
                            break
                        tail = chunk[-len(token):]
    assert save.wait(timeout=120) == 0
    assert layers >= min_layers, f"only {layers} layers read from docker save"
    return hits


class _Prefixed:
    """A stream whose first bytes were already read: those, then the rest."""

    def __init__(self, head: bytes, rest):
        self.head, self.rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.rest.read(size)
        if size is None or size < 0:
            out, self.head = self.head + self.rest.read(), b""
            return out
        out, self.head = self.head[:size], self.head[size:]
        return out if len(out) == size else out + self.rest.read(size - len(out))


@pytest.mark.slow
def test_no_planted_file_or_builder_variable_reaches_any_layer(image, tmp_path):
    """The committed project copied, built; then sentinel files planted in .git, .venv, data,
    outputs, models and credential spots and built again with a secret in the builder's
    environment: no history entry and no image config holds the sentinel, and the layers are
    the clean build's, digest for digest. The clean build never saw the sentinel (a fresh random
    token), so equal digests mean no layer holds it; where a digest differs, every file of every
    layer is read and the ones holding the sentinel are named in the failure."""
    token = f"sentinel-{uuid.uuid4().hex}"
    context = tmp_path / "checkout"
    _tracked_copy(context)
    clean, planted = f"t2iops:clean-{token[-8:]}", f"t2iops:planted-{token[-8:]}"
    try:
        build(context, clean, os.environ)
        files = _plant(context, token)
        build(context, planted, {**os.environ, "AWS_SECRET_ACCESS_KEY": token, "T2IOPS_SENTINEL": token})
        inspect = json.loads(subprocess.run(["docker", "image", "inspect", planted], capture_output=True, text=True,
                                            check=True).stdout)[0]
        history = subprocess.run(["docker", "history", "--no-trunc", planted], capture_output=True, text=True,
                                 check=True).stdout
        assert token not in json.dumps(inspect) and token not in history
        reference = json.loads(subprocess.run(["docker", "image", "inspect", clean], capture_output=True, text=True,
                                              check=True).stdout)[0]
        if inspect["RootFS"]["Layers"] != reference["RootFS"]["Layers"]:
            leaked = _layers_holding(planted, token.encode())
            pytest.fail(f"planting {files} changed a layer; the files holding the sentinel: {leaked or 'none'}")
    finally:
        subprocess.run(["docker", "image", "rm", clean, planted], capture_output=True)


def test_the_layer_scan_names_a_file_holding_the_sentinel(docker, tmp_path):
    """The scan the test above falls back on, on a two-layer image: it names each file holding
    the sentinel, whatever the file is called, a sentinel across its 1 MiB read boundary included,
    and no other file."""
    token = f"sentinel-{uuid.uuid4().hex}"
    (tmp_path / "innocent.txt").write_text("nothing here\n")
    (tmp_path / "cache.bin").write_bytes(b"\0" * ((1 << 20) - 10) + token.encode() + b"\0" * 100)
    (tmp_path / "settings.cfg").write_text(f"key={token}\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY innocent.txt settings.cfg /\nCOPY cache.bin /opt/\n")
    tag = f"t2iops:scan-{token[-8:]}"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True, capture_output=True, text=True,
                   timeout=300)
    try:
        hits = _layers_holding(tag, token.encode(), min_layers=2)
    finally:
        subprocess.run(["docker", "image", "rm", tag], capture_output=True)
    assert sorted(h.rsplit(": ", 1)[-1] for h in hits) == ["opt/cache.bin", "settings.cfg"], hits


def build(context: Path, tag: str, env) -> None:
    built = subprocess.run(["bash", str(context / "scripts" / "build_image.sh"), "--tag", tag], cwd=context, env=env,
                           capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-4000:]
