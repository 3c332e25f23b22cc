"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint, schedule it, follow a run.

All three go through the stock ``kfp.Client``; the run arguments are validated against the
package first, so a bad parameter fails here, naming itself, and nothing is sent.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO

from ..errors import GateFailed, T2IError, UsageError
from .compile import read_package, validate_arguments

log = logging.getLogger(__name__)

TOKEN_ENV = "T2IOPS_KFP_TOKEN"
TERMINAL = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED"}
GATED_TASKS = ("publish",)


class RunFailed(T2IError):
    """The pipeline run ended in a state other than SUCCEEDED."""


@dataclass
class RunOutcome:
    run_id: str
    state: str
    gate_passed: Optional[bool]


class HostUnreachable(T2IError):
    """The KFP endpoint did not answer."""


@contextlib.contextmanager
def reaching(host: str) -> Iterator[None]:
    """Talk to ``host``: a connection failure becomes one line naming the host, and urllib3's
    per-retry warnings stay quiet (they would say the same thing three times)."""
    import urllib3

    noisy = logging.getLogger("urllib3.connectionpool")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        yield
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise HostUnreachable(f"cannot reach the KFP endpoint {host}: {type(reason).__name__}: {reason}") from None
    finally:
        noisy.setLevel(level)


def make_client(host: str, namespace: Optional[str] = None, token: Optional[str] = None):
    import kfp

    if not host:
        raise UsageError("--host is required (the KFP API endpoint, e.g. http://localhost:8080)")
    with reaching(host), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kfp's note on server versions, on every client
        return kfp.Client(host=host, namespace=namespace, existing_token=token or os.environ.get(TOKEN_ENV))


def submit_run(
    client, package: str | Path, arguments: dict[str, Any], experiment: str, run_name: Optional[str] = None,
    namespace: Optional[str] = None, enable_caching: Optional[bool] = None, service_account: Optional[str] = None,
) -> str:
    """Create a run of ``package``; returns its id."""
    validate_arguments(read_package(package), arguments)
    result = client.create_run_from_pipeline_package(
        str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
        namespace=namespace, enable_caching=enable_caching, service_account=service_account,
    )
    return result.run_id


def normalize_cron(expr: str) -> str:
    """KFP's cron has six fields (seconds first); a classic five-field one gets second 0."""
    from .cluster_checks import check_cron

    return check_cron(expr)


@dataclass(frozen=True)
class Schedule:
    """When and how a recurring run starts (``t2iops pipeline schedule``)."""

    cron: str  # five fields, or KFP's six with seconds first
    name: str
    experiment: str
    max_concurrency: int = 1
    catchup: bool = False  # run the intervals missed while paused
    namespace: Optional[str] = None
    enable_caching: Optional[bool] = None  # None: what the package says
    service_account: Optional[str] = None


def schedule_run(client, package: str | Path, arguments: dict[str, Any], schedule: Schedule) -> str:
    """Create a recurring run of ``package`` with ``arguments``; returns its id."""
    validate_arguments(read_package(package), arguments)
    experiment = client.create_experiment(schedule.experiment, namespace=schedule.namespace)
    job = client.create_recurring_run(
        experiment_id=experiment.experiment_id, job_name=schedule.name, cron_expression=normalize_cron(schedule.cron),
        max_concurrency=schedule.max_concurrency, no_catchup=not schedule.catchup,
        pipeline_package_path=str(package), params=arguments, enabled=True,
        enable_caching=schedule.enable_caching, service_account=schedule.service_account,
    )
    return job.recurring_run_id


def _tasks(run) -> list[Any]:
    details = getattr(run, "run_details", None)
    return list(getattr(details, "task_details", None) or [])


def gate_outcome(run) -> Optional[bool]:
    """Whether the gated branch (publish) ran: True when it succeeded, False when the run
    finished without it (the If was false), None when the run did not succeed."""
    if str(run.state) != "SUCCEEDED":
        return None
    for task in _tasks(run):
        if task.display_name in GATED_TASKS and str(task.state) == "SUCCEEDED":
            return True
    return False


def wait_for_run(
    client, run_id: str, timeout_s: float = 48 * 3600, poll_s: float = 20, stream: Optional[TextIO] = None,
    sleep=time.sleep,
) -> RunOutcome:
    """Follow a run, printing each state change of the run and its tasks. Raises
    :class:`RunFailed` when it does not succeed, :class:`GateFailed` when it succeeded but the
    evaluation gate kept the model from being exported and published."""
    stream = stream or sys.stderr
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while True:
        run = client.get_run(run_id)
        state = str(run.state)
        if seen.get("") != state:
            print(f"run {run_id}: {state}", file=stream, flush=True)
            seen[""] = state
        for task in _tasks(run):
            key = task.task_id or task.display_name
            if seen.get(key) != str(task.state):
                seen[key] = str(task.state)
                print(f"  {task.display_name}: {task.state}", file=stream, flush=True)
        if state in TERMINAL:
            break
        if time.monotonic() > deadline:
            raise RunFailed(f"run {run_id} did not finish within {timeout_s / 3600:.1f} h (last state {state})")
        sleep(poll_s)
    if state != "SUCCEEDED":
        error = getattr(run, "error", None)
        message = getattr(error, "message", None) if error else None
        raise RunFailed(f"run {run_id} ended {state}" + (f": {message}" if message else ""))
    passed = gate_outcome(run)
    if passed is False:
        raise GateFailed(f"run {run_id} succeeded but the evaluation gate failed: the model was not exported or published")
    return RunOutcome(run_id, state, passed)
