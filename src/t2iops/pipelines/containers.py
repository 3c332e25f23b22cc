"""Running pipeline steps in the project image on this machine (kfp.local's ``DockerRunner``).

A step runs as it would in a pod: the image's own user (uid 1000), the image's environment, the
step's command exactly as compiled. What differs from a cluster is only how the step reaches its
inputs: the container shares the host's network (so an S3 server on 127.0.0.1 answers) and the
run's work folder is mounted at the same path (so folder storage and the pipeline root work as
they do for the subprocess runner). The standard AWS variables and the offline switches are passed
through by name; nothing else from the host's environment enters the container.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ..errors import UsageError

# The image's non-root user (infra/docker/Dockerfile).
IMAGE_UID = 1000
# Host variables a step may need, passed by name when set: credentials and endpoint of the store,
# the offline switches, threads (so a run is as reproducible as under the subprocess runner).
PASSED_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "TQDM_DISABLE", "T2IOPS_LOG_INTERVAL",
)
# Labels on every step container, so an operator (or a test) can find a run's containers.
RUN_LABEL = "io.t2iops.run"


def docker_client():
    """A client of the local daemon, or a UsageError that says how to get one."""
    try:
        import docker
    except ImportError:
        raise UsageError("--runner docker needs the docker package (pip install docker)") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker.errors.DockerException, ConnectionError, PermissionError...
        raise UsageError(
            f"--runner docker: no docker daemon answers ({type(exc).__name__}: {exc}); start dockerd, or"
            " set DOCKER_HOST, or use --runner subprocess"
        ) from None
    return client


def require_image(client, image: str) -> None:
    """The runner would try to pull a missing image; a locally built one never needs that."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise UsageError(
            f"image {image!r} is not on this machine: build it with `bash scripts/build_image.sh --tag {image}`"
            " (or docker pull it), or name another with --image"
        ) from None


def writable_by_image_user(*folders: Path) -> None:
    """The step containers run as uid 1000 and write into these folders (the pipeline root, the
    run's storage, the download cache): make them writable for that user. A local scratch folder
    of the run, never a user's data."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        if folder.stat().st_uid != IMAGE_UID:
            folder.chmod(folder.stat().st_mode | stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)


def runner_args(work: Path, run_label: str) -> dict[str, Any]:
    """``kfp.local.DockerRunner`` keyword arguments for a run whose files live under ``work``."""
    from docker.types import Mount

    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    return {
        "network_mode": "host",
        "environment": env,
        "mounts": [Mount(target=str(work), source=str(work), type="bind")],
        "labels": {RUN_LABEL: run_label},
    }


def docker_runner(work: Path, image: str, run_label: str):
    """The runner for ``kfp.local.init``, after checking the daemon and the image."""
    from kfp import local

    client = docker_client()
    try:
        require_image(client, image)
    finally:
        client.close()
    return local.DockerRunner(**runner_args(work, run_label))
