"""The project image, for tests that run it: a docker daemon that answers and the image built by
scripts/build_image.sh (tag: $T2IOPS_TEST_IMAGE, default t2iops:dev).

Where this machine cannot run containers the tests skip and say why. Where it can (CI sets
T2IOPS_REQUIRE_CONTAINERS=1 once its daemon runs and the image is built), a missing daemon or
image is a failure, never a silent skip."""
from __future__ import annotations

import os
import subprocess

import pytest

IMAGE = os.environ.get("T2IOPS_TEST_IMAGE", "t2iops:dev")
REQUIRED = os.environ.get("T2IOPS_REQUIRE_CONTAINERS") == "1"


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"T2IOPS_REQUIRE_CONTAINERS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker():
    """A docker SDK client of the local daemon."""
    try:
        import docker as sdk
    except ImportError:
        _unavailable("the docker package is not installed")
    try:
        client = sdk.from_env()
        client.ping()
    except Exception as exc:
        _unavailable(f"no docker daemon answers ({type(exc).__name__}: {exc}); start dockerd to run the container tests")
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(docker) -> str:
    """The tag of the built project image."""
    import docker as sdk

    try:
        docker.images.get(IMAGE)
    except sdk.errors.ImageNotFound:
        _unavailable(f"image {IMAGE} is not built (bash scripts/build_image.sh --tag {IMAGE})")
    return IMAGE


def run_in(image: str, *command: str, args: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    """``docker run --rm [args] image command...`` through the CLI, as a person would type it."""
    return subprocess.run(["docker", "run", "--rm", *args, image, *command], capture_output=True, text=True,
                          timeout=timeout)
