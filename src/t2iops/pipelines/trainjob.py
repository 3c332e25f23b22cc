"""Multi-node training: the Kubernetes job object, and a launcher that creates it and waits.

Two job kinds, both N nodes x M GPUs, both running ``t2iops train`` from the project image on the
GPU node pool, with the S3 secret as environment, a memory-backed /dev/shm, and the training
output (checkpoints + final adapter) on S3 so every node and every retry sees the same files:

* ``trainjob``: a Kubeflow Trainer ``TrainJob`` (trainer.kubeflow.org/v1alpha1, Trainer v2.3.0) on
  the project's MPI runtime (``t2iops-deepspeed``, infra/k8s/runtime: every node runs the project
  image; the launcher runs ``mpirun`` over the nodes' hostfile and each rank runs
  :func:`rank_command`, which maps OpenMPI's rank variables to the torch.distributed ones).
* ``pytorchjob``: a Training Operator ``PyTorchJob`` (kubeflow.org/v1), one Master and N-1
  Workers, each running ``torchrun`` with the rendezvous the operator sets (MASTER_ADDR, RANK).

The job is named after the pipeline run, so a retried train step finds the job it started
before: a running one is awaited, a failed one is replaced (and resumes from the checkpoint).
"""
from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import T2IError, UsageError
from .settings import PipelineSettings

log = logging.getLogger(__name__)

TRAINJOB_API = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB_API = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
PATCH_MANAGER = "t2iops.io/pipeline"
SHM_VOLUME = "dshm"
# One params file per rank: several ranks of one node share its /tmp.
PARAMS_PATH = '"${TMPDIR:-/tmp}/t2iops-params-$RANK.yaml"'
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class DistributedTrainingFailed(T2IError):
    """The multi-node job ended in failure, or did not finish in time."""


@dataclass
class DistributedTrainSpec:
    """Everything a multi-node training job needs; built from the settings and the run."""

    name: str
    namespace: str
    image: str
    nodes: int
    gpus_per_node: int
    cache_uri: str
    out_uri: str
    config_yaml: str
    cpu: str = "8"
    memory: str = "64Gi"
    accelerator_type: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    shm_size: str = "16Gi"
    secret_env: dict[str, tuple[str, str]] = field(default_factory=dict)  # env -> (secret, key)
    service_account: Optional[str] = None
    runtime: str = "t2iops-deepspeed"
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", self.name):
            raise UsageError(f"job name {self.name!r} is not an RFC 1035 label (lowercase, <= 63 characters)")
        if self.nodes < 1:
            raise UsageError(f"pipeline parameter 'train_nodes' must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise UsageError(f"pipeline parameter 'gpus_per_node' must be >= 1, got {self.gpus_per_node}")
        for what, uri in (("encode cache", self.cache_uri), ("training output", self.out_uri)):
            if not uri.startswith("s3://"):
                raise UsageError(
                    f"multi-node training needs the {what} on S3 so every node can read it, got {uri!r} "
                    "(set the pipeline root / run_root to an s3:// prefix)"
                )


def job_name(run_id: str, prefix: str = "t2iops-train") -> str:
    """A stable, valid object name for this run's training job."""
    slug = re.sub(r"[^a-z0-9]", "", run_id.lower())[:20] or "run"
    return f"{prefix}-{slug}"[:63].rstrip("-")


def spec_from_settings(
    settings: PipelineSettings, *, run_id: str, namespace: str, nodes: int, gpus_per_node: int,
    cache_uri: str, out_uri: str, config_yaml: str,
) -> DistributedTrainSpec:
    step = settings.steps.train
    pool = settings.gpu_pool
    secret = settings.s3_secret
    return DistributedTrainSpec(
        name=job_name(run_id),
        namespace=namespace,
        image=settings.image,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        cache_uri=cache_uri,
        out_uri=out_uri,
        config_yaml=config_yaml,
        cpu=step.cpu,
        memory=step.memory,
        accelerator_type=pool.accelerator_type,
        node_selector=dict(pool.node_selector),
        tolerations=[t.model_dump(exclude_none=True) for t in pool.tolerations],
        shm_size=pool.shm_size,
        secret_env={env: (secret.name, key) for env, key in secret.keys.items()} if secret else {},
        service_account=settings.train_launcher.service_account,
        runtime=settings.train_launcher.trainjob_runtime,
        labels={"app.kubernetes.io/part-of": "t2iops", "t2iops.io/run-id": re.sub(r"[^A-Za-z0-9._-]", "", run_id)[:63]},
    )


# ---------------------------------------------------------------------------------------
# Pieces shared by both kinds
def _train_args(spec: DistributedTrainSpec) -> str:
    quoted = shlex.join(["--cache", spec.cache_uri, "--out", spec.out_uri, "--resume", "latest"])
    return f"-m t2iops.cli train --params {PARAMS_PATH} {quoted}"  # the params path expands per rank


def _env(spec: DistributedTrainSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "T2IOPS_CONFIG_YAML", "value": spec.config_yaml}]
    for name, (secret, key) in sorted(spec.secret_env.items()):
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def _resources(spec: DistributedTrainSpec) -> dict[str, Any]:
    gpus = str(spec.gpus_per_node)
    return {
        "requests": {"cpu": spec.cpu, "memory": spec.memory, spec.accelerator_type: gpus},
        "limits": {"memory": spec.memory, spec.accelerator_type: gpus},
    }


def _shm_volume(spec: DistributedTrainSpec) -> dict[str, Any]:
    return {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}


_SHM_MOUNT = {"name": SHM_VOLUME, "mountPath": "/dev/shm"}
_WRITE_PARAMS = f'printf "%s" "$T2IOPS_CONFIG_YAML" > {PARAMS_PATH}'
MASTER_PORT = 29500


def _metadata(spec: DistributedTrainSpec) -> dict[str, Any]:
    return {"name": spec.name, "namespace": spec.namespace, "labels": dict(spec.labels)}


# ---------------------------------------------------------------------------------------
def rank_command(spec: DistributedTrainSpec) -> list[str]:
    """What ``mpirun`` starts for every rank on every node: OpenMPI's rank variables become the
    torch.distributed ones, the config is written to a per-rank file, then ``t2iops train``
    resumes from the run's latest checkpoint (a fresh run when there is none). Besides the OMPI
    variables it needs MASTER_ADDR / MASTER_PORT, T2IOPS_CONFIG_YAML and the S3 credentials."""
    rank_script = (
        "export RANK=$OMPI_COMM_WORLD_RANK LOCAL_RANK=$OMPI_COMM_WORLD_LOCAL_RANK "
        "WORLD_SIZE=$OMPI_COMM_WORLD_SIZE; " + _WRITE_PARAMS + f"; exec python {_train_args(spec)}"
    )
    return ["bash", "-c", rank_script]


def trainjob_object(spec: DistributedTrainSpec) -> dict[str, Any]:
    """A TrainJob on the MPI-based DeepSpeed runtime: ``mpirun`` starts nodes x GPUs ranks."""
    world = spec.nodes * spec.gpus_per_node
    exports = " ".join(f"-x {name}" for name in ["T2IOPS_CONFIG_YAML", *sorted(spec.secret_env)])
    script = (
        "set -eu; MASTER_ADDR=$(head -n1 /etc/mpi/hostfile | cut -d' ' -f1); "
        f"exec mpirun --hostfile /etc/mpi/hostfile -np {world} --bind-to none "
        f"-x MASTER_ADDR=$MASTER_ADDR -x MASTER_PORT={MASTER_PORT} {exports} "
        f"{shlex.join(rank_command(spec))}"
    )
    pod_patch: dict[str, Any] = {
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [dict(t) for t in spec.tolerations],
        "volumes": [_shm_volume(spec)],
        "containers": [{"name": "node", "volumeMounts": [dict(_SHM_MOUNT)]}],
    }
    if spec.service_account:
        pod_patch["serviceAccountName"] = spec.service_account
    replicated = [
        {"name": job, "template": {"spec": {"template": {"spec": pod_patch}}}} for job in ("launcher", "node")
    ]
    return {
        "apiVersion": f"{TRAINJOB_API[0]}/{TRAINJOB_API[1]}",
        "kind": TRAINJOB_API[3],
        "metadata": _metadata(spec),
        "spec": {
            "runtimeRef": {"name": spec.runtime, "apiGroup": TRAINJOB_API[0], "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": spec.image,
                "command": ["bash", "-c", script],
                "env": _env(spec),
                "numNodes": spec.nodes,
                "numProcPerNode": spec.gpus_per_node,
                "resourcesPerNode": _resources(spec),
            },
            "runtimePatches": [
                {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": replicated}}}}
            ],
        },
    }


def pytorchjob_object(spec: DistributedTrainSpec) -> dict[str, Any]:
    """A PyTorchJob: one Master + (nodes - 1) Workers, ``torchrun`` with M processes each."""
    script = (
        "set -eu; " + _WRITE_PARAMS + "; "
        f"exec torchrun --nnodes {spec.nodes} --nproc_per_node {spec.gpus_per_node} "
        '--node_rank "$RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" '
        f"{_train_args(spec)}"
    )
    pod_spec: dict[str, Any] = {
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [dict(t) for t in spec.tolerations],
        "volumes": [_shm_volume(spec)],
        "containers": [
            {
                "name": "pytorch",  # the operator looks the container up by this name
                "image": spec.image,
                "command": ["bash", "-c", script],
                "env": _env(spec),
                "resources": _resources(spec),
                "volumeMounts": [dict(_SHM_MOUNT)],
            }
        ],
    }
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account

    def replica(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": pod_spec}}

    replicas = {"Master": replica(1)}
    if spec.nodes > 1:
        replicas["Worker"] = replica(spec.nodes - 1)
    return {
        "apiVersion": f"{PYTORCHJOB_API[0]}/{PYTORCHJOB_API[1]}",
        "kind": PYTORCHJOB_API[3],
        "metadata": _metadata(spec),
        "spec": {
            "nprocPerNode": str(spec.gpus_per_node),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "pytorchReplicaSpecs": replicas,
        },
    }


def job_object(kind: str, spec: DistributedTrainSpec) -> dict[str, Any]:
    """The job to create for ``train_launcher.kind``: a TrainJob or a PyTorchJob object."""
    if kind == "trainjob":
        return trainjob_object(spec)
    if kind == "pytorchjob":
        return pytorchjob_object(spec)
    raise UsageError(f"train launcher kind must be 'trainjob' or 'pytorchjob', got {kind!r}")


# ---------------------------------------------------------------------------------------
# Launch and await
def current_namespace(default: str = "kubeflow") -> str:
    try:
        return NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


def job_state(job: dict[str, Any]) -> Optional[str]:
    """'succeeded' / 'failed' from the object's status conditions, else None (still running)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    on = {c.get("type") for c in conditions if str(c.get("status")) == "True"}
    if on & {"Complete", "Succeeded"}:
        return "succeeded"
    if "Failed" in on:
        return "failed"
    return None


def _api_of(job: dict[str, Any]) -> tuple[str, str, str]:
    kind = job["kind"]
    for group, version, plural, k in (TRAINJOB_API, PYTORCHJOB_API):
        if k == kind:
            return group, version, plural
    raise UsageError(f"unknown job kind {kind!r}")


def custom_objects_api(api_client=None):
    """CustomObjectsApi from the pod's service account, else the local kubeconfig."""
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    return client.CustomObjectsApi(api_client)


def launch_and_wait(
    job: dict[str, Any], *, poll_seconds: float = 30, timeout_s: float = 72 * 3600,
    api=None, sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Create the job (or adopt this run's existing one), poll until it ends; returns the final
    object. Raises :class:`DistributedTrainingFailed` on failure or timeout."""
    from kubernetes.client.exceptions import ApiException

    api = api or custom_objects_api()
    group, version, plural = _api_of(job)
    ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
    where = f"{job['kind']} {ns}/{name}"
    try:
        api.create_namespaced_custom_object(group, version, ns, plural, job)
        log.info("created %s", where)
    except ApiException as exc:
        if exc.status != 409:
            raise DistributedTrainingFailed(f"cannot create {where}: {exc.status} {exc.reason}: {exc.body}") from None
        existing = api.get_namespaced_custom_object(group, version, ns, plural, name)
        if job_state(existing) == "failed":
            # A retry of the train step: replace the failed job; it resumes from the checkpoint.
            log.warning("%s failed before; replacing it (training resumes from the last checkpoint)", where)
            api.delete_namespaced_custom_object(group, version, ns, plural, name, propagation_policy="Foreground")
            _wait_deleted(api, group, version, ns, plural, name, poll_seconds, sleep)
            api.create_namespaced_custom_object(group, version, ns, plural, job)
        else:
            log.info("%s exists (a retried step): waiting for it", where)
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        obj = api.get_namespaced_custom_object(group, version, ns, plural, name)
        state = job_state(obj)
        conditions = [c.get("type") for c in (obj.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
        if conditions != last:
            log.info("%s: %s", where, ", ".join(conditions) or "pending")
            last = conditions
        if state == "succeeded":
            return obj
        if state == "failed":
            reason = next((c.get("message") or c.get("reason") for c in obj["status"]["conditions"] if c.get("type") == "Failed"), "")
            raise DistributedTrainingFailed(f"{where} failed: {reason}")
        if time.monotonic() > deadline:
            raise DistributedTrainingFailed(f"{where} did not finish within {timeout_s / 3600:.1f} h")
        sleep(poll_seconds)


def _wait_deleted(api, group, version, ns, plural, name, poll_seconds, sleep, attempts: int = 120) -> None:
    from kubernetes.client.exceptions import ApiException

    for _ in range(attempts):
        try:
            api.get_namespaced_custom_object(group, version, ns, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        sleep(min(poll_seconds, 5))
    raise DistributedTrainingFailed(f"{plural} {ns}/{name} was not deleted in time")
