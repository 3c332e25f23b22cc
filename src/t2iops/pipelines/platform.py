"""What each pipeline step asks of the cluster, applied from the settings in one place.

Every step: CPU/memory requests (and a memory limit), the image pull policy, caching, the S3
secret as environment variables (names only: the values stay in the cluster). GPU steps also:
the GPU request/limit, the GPU pool's node selector and toleration, and a memory-backed
``/dev/shm``. Steps with retries (train, evaluate) get a retry policy with backoff.
"""
from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask

from .settings import PipelineSettings

SHM_VOLUME = "dshm"


def configure_step(task: PipelineTask, step: str, settings: PipelineSettings, display_name: str | None = None) -> PipelineTask:
    res = settings.steps.get(step)
    task.set_display_name(display_name or step)
    task.set_caching_options(enable_caching=res.cache)
    task.set_cpu_request(res.cpu)
    task.set_memory_request(res.memory)
    task.set_memory_limit(res.memory)
    kubernetes.set_image_pull_policy(task, settings.image_pull_policy)
    if settings.s3_secret is not None:
        kubernetes.use_secret_as_env(task, secret_name=settings.s3_secret.name, secret_key_to_env={
            key: env for env, key in settings.s3_secret.keys.items()
        })
    if res.gpus > 0:
        request_gpus(task, res.gpus, settings)
    if res.retries > 0:
        task.set_retry(
            num_retries=res.retries,
            backoff_duration=res.backoff,
            backoff_factor=res.backoff_factor,
            backoff_max_duration=res.backoff_max,
        )
    return task


def request_gpus(task: PipelineTask, gpus: int, settings: PipelineSettings) -> None:
    pool = settings.gpu_pool
    task.set_accelerator_type(pool.accelerator_type)
    task.set_accelerator_limit(gpus)
    for key, value in pool.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in pool.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory", size_limit=pool.shm_size)
