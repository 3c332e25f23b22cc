"""The retraining loop: compile -> submit -> wait -> compare -> promote or keep.

The same flow on a cluster (``kfp.Client``) and on this machine (``--local``: kfp.local through
:func:`t2iops.pipelines.local.run_local`). The run publishes its model as version
``<UTC yyyymmdd-HHMMSS>-<git sha7>`` (``--version`` to choose), so the comparison knows what to
read; the git SHA and the data revision go into the run name, its parameters and the decision.
A dry run writes nothing to the registry: the run publishes into a scratch registry in its work
area (:func:`scratch_registry`), where the comparison reads the challenger; the champion is only
read. Exit codes: :data:`EXIT_CODES` (also in ``t2iops retrain --help`` and docs/operations.md).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import GateFailed, UsageError
from ..registry import decision as decisions
from ..registry.moves import move_champion
from ..registry.pointer import current_champion
from ..registry.records import PromotionConflict
from ..registry.versions import DEFAULT_MODEL_NAME, RegistryIntegrityError, check_name, read_version

log = logging.getLogger(__name__)

EXIT_PROMOTED, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_GATE_FAILED, EXIT_KEPT, EXIT_CONFLICT, EXIT_UNVERIFIED = range(7)
EXIT_CODES = f"""exit codes:
  {EXIT_PROMOTED}  promoted: the challenger is the new champion (--dry-run: it would be; nothing written
     to the registry)
  {EXIT_RUN_FAILED}  the run failed (a step failed, the run was cancelled or timed out): nothing published
  {EXIT_USAGE}  usage or configuration error: nothing was started
  {EXIT_GATE_FAILED}  the evaluation gate failed: the run succeeded but nothing was exported or published
  {EXIT_KEPT}  champion kept: the challenger was published but did not beat the champion (reasons in decision.json)
  {EXIT_CONFLICT}  conflict: the champion moved while this run decided; nothing promoted (compare again)
  {EXIT_UNVERIFIED}  unverified: the challenger won but a file of it does not match its manifest; nothing promoted"""


@dataclass
class RetrainRequest:
    """Everything ``retrain`` needs, independent of argparse."""

    registry: str
    model_name: str = DEFAULT_MODEL_NAME
    version: Optional[str] = None
    run_params: list[str] = field(default_factory=list)
    data_rev: Optional[str] = None
    dry_run: bool = False
    out: str = "retrain-out"
    settings: Optional[str] = None
    image: Optional[str] = None
    package: Optional[str] = None  # a compiled pipeline (default: compile the checkout now)
    local: bool = False
    # cluster
    host: Optional[str] = None
    namespace: Optional[str] = None
    experiment: str = "t2iops"
    service_account: Optional[str] = None
    no_cache: bool = False
    timeout_hours: float = 48.0
    poll_seconds: float = 20.0
    # local
    work: str = "runs/retrain-local"
    base_model: str = "tiny-sd15"
    smoke: bool = True


@dataclass
class RetrainResult:
    outcome: str  # promoted | would_promote | kept | gate_failed | run_failed | conflict | unverified
    exit_code: int
    challenger: str
    champion_before: Optional[str]
    champion_after: Optional[str]
    run_id: Optional[str]
    git_sha: Optional[str]
    data_rev: Optional[str]
    decision: Optional[decisions.Decision] = None
    message: str = ""

    dry_run: bool = False
    challenger_uri: Optional[str] = None  # where the run published it (a dry run: the scratch registry)

    def to_dict(self, out: Path) -> dict[str, Any]:
        return {"outcome": self.outcome, "exit_code": self.exit_code, "challenger": self.challenger,
                "champion": self.champion_after, "champion_before": self.champion_before, "run_id": self.run_id,
                "git_sha": self.git_sha, "data_rev": self.data_rev, "message": self.message,
                "decision": str(out / "decision.md"), "dry_run": self.dry_run, "challenger_uri": self.challenger_uri}


def git_sha(cwd: Optional[Path] = None) -> Optional[str]:
    """HEAD of the checkout we run from (None outside a git checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _run_parameters(req: RetrainRequest, cfg: Any, package: Path, version: str, sha: Optional[str]) -> dict[str, Any]:
    """The run's parameters: ``-p`` items, then what retrain owns (registry, version, the code's
    git SHA for the model's lineage, data rev)."""
    from ..pipelines.compile import parse_cli_parameters, read_package
    from ..pipelines.runtime import stage_parameters

    params = parse_cli_parameters(req.run_params, read_package(package))
    owned = {"registry_uri": req.registry, "model_name": req.model_name, "model_version": version}
    hints = {"registry_uri": "use --registry", "model_name": "use --model-name", "model_version": "use --version"}
    if sha:
        owned["git_sha"] = sha
        hints["git_sha"] = "it is the HEAD of the checkout retrain runs from"
    for name, value in owned.items():
        if name in params and params[name] != value:
            raise UsageError(f"-p {name}={params[name]} contradicts what retrain sets ({value!r}); {hints[name]}")
    params.update(owned)
    for name, value in stage_parameters(cfg).items():  # each step's own sections of this run's spec
        params.setdefault(name, value)
    if req.data_rev:
        if "dvc_rev" in params and params["dvc_rev"] != req.data_rev:
            raise UsageError(f"--data-rev {req.data_rev} contradicts -p dvc_rev={params['dvc_rev']}")
        params["dvc_rev"] = req.data_rev
    elif params.get("data_source") == "dvc" and "dvc_rev" not in params and sha:
        params["dvc_rev"] = sha  # the data as this commit's dvc.lock / *.dvc files pin it
    return params


def scratch_registry(req: RetrainRequest, package: Path, params: dict[str, Any]) -> str:
    """Where a dry run publishes its challenger: ``<work>/dry-run-registry`` with --local, else
    ``<run_root>/dry-run-registry`` (the run's own work area, which its pods can write). Refused
    when that lies inside the registry."""
    from .. import storage
    from ..pipelines.compile import parameter_specs, read_package

    if req.local:
        scratch = str(Path(req.work).resolve() / "dry-run-registry")
    else:
        default = parameter_specs(read_package(package)).get("run_root", {}).get("defaultValue")
        run_root = params.get("run_root") or default
        if not run_root:
            raise UsageError("--dry-run needs a run_root to publish its challenger to (-p run_root=s3://bucket/runs)")
        scratch = storage.join(str(run_root), "dry-run-registry")
    registry = req.registry if storage.is_s3(req.registry) else str(Path(req.registry).resolve())
    inside = scratch if storage.is_s3(scratch) else str(Path(scratch).resolve())
    if inside == registry or inside.startswith(registry.rstrip("/") + "/"):
        raise UsageError(f"--dry-run would publish its challenger to {scratch}, inside the registry {req.registry}: "
                         "give the run another run_root (-p run_root=...)")
    return scratch


def _run_cluster(req: RetrainRequest, package: Path, params: dict[str, Any], run_name: str) -> str:
    """Submit and wait; returns the run id. Raises RunFailed / GateFailed like ``pipeline submit --wait``."""
    from ..pipelines.submit import make_client, submit_run, wait_for_run

    client = make_client(req.host, req.namespace)
    run_id = submit_run(client, package, params, req.experiment, run_name=run_name, namespace=req.namespace,
                        enable_caching=False if req.no_cache else None, service_account=req.service_account)
    print(json.dumps({"run_id": run_id, "host": req.host, "run_name": run_name}), flush=True)
    wait_for_run(client, run_id, timeout_s=req.timeout_hours * 3600, poll_s=req.poll_seconds)
    return run_id


def _run_local(req: RetrainRequest, cfg: Any, params: dict[str, Any]) -> str:
    from ..pipelines.local import run_local

    # run_local builds the config_<stage> parameters from cfg (with its local model and cache)
    local_params = {k: v for k, v in params.items() if not k.startswith("config_")}
    outcome = run_local(req.work, cfg, local_params, s3="none", base_model=req.base_model, smoke=req.smoke,
                        settings=req.settings)
    if not outcome.gate_passed:
        raise GateFailed("the evaluation gate failed: nothing was exported or published")
    return f"local:{outcome.pipeline_root}"


def _failure_markdown(title: str, message: str, context: dict[str, Any]) -> str:
    ctx = ", ".join(f"{k} `{v}`" for k, v in context.items() if v)
    return f"### Retrain: {title}\n\n- {message}\n\nContext: {ctx}.\n"


def retrain(req: RetrainRequest, cfg: Any) -> RetrainResult:
    """Run the whole loop; the result says what happened (see EXIT_CODES)."""
    from ..pipelines.compile import compile_pipeline
    from ..pipelines.submit import RunFailed

    if not req.local and not req.host:
        raise UsageError("give --host URL (a KFP endpoint) or --local")
    check_name(req.model_name, "--model-name")
    sha = git_sha()
    version = check_name(req.version or time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{(sha or 'nogit')[:7]}",
                         "--version")
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    # The run specification baked in as the config_<stage> defaults, as `pipeline compile` does.
    package = Path(req.package) if req.package else compile_pipeline(out / "pipeline.yaml", req.settings, req.image, cfg)
    params = _run_parameters(req, cfg, package, version, sha)
    if req.dry_run:
        params["registry_uri"] = scratch_registry(req, package, params)
    if not req.local:
        from ..pipelines.cluster_checks import check_cluster_arguments
        from ..pipelines.compile import parameter_specs, read_package

        defaults = {name: s.get("defaultValue") for name, s in parameter_specs(read_package(package)).items()}
        check_cluster_arguments({**defaults, **params})  # local paths, cron, shards: before any network call
    data_rev = params.get("dvc_rev") if params.get("data_source") == "dvc" else params.get("data_source", "synth")
    context = {"version": version, "git_sha": sha, "data_rev": data_rev, "dry_run": req.dry_run,
               "params_fingerprint": cfg.fingerprint()}
    run_id = None
    try:
        run_name = f"retrain-{version}"
        run_id = _run_local(req, cfg, params) if req.local else _run_cluster(req, package, params, run_name)
    except GateFailed as exc:
        return _finish_failure(out, "gate_failed", EXIT_GATE_FAILED, str(exc), version, run_id, sha, data_rev, context)
    except (RunFailed, RuntimeError) as exc:  # kfp.local raises RuntimeError when a step fails
        return _finish_failure(out, "run_failed", EXIT_RUN_FAILED, str(exc), version, run_id, sha, data_rev, context)
    context["run_id"] = run_id
    return _decide_and_promote(req, cfg, out, version, run_id, sha, data_rev, context, params["registry_uri"])


def _finish_failure(out: Path, outcome: str, code: int, message: str, version: str, run_id: Optional[str],
                    sha: Optional[str], data_rev: Optional[str], context: dict[str, Any]) -> RetrainResult:
    title = {"gate_failed": "the evaluation gate failed", "run_failed": "the run failed"}[outcome]
    (out / "decision.md").write_text(_failure_markdown(title, message, context))
    (out / "decision.json").write_text(json.dumps({"outcome": outcome, "challenger": version, "reasons": [message],
                                                   "context": context}, indent=2) + "\n")
    return RetrainResult(outcome, code, version, None, None, run_id, sha, data_rev, message=message)


def _decide_and_promote(req: RetrainRequest, cfg: Any, out: Path, version: str, run_id: str, sha: Optional[str],
                        data_rev: Optional[str], context: dict[str, Any], published_to: str) -> RetrainResult:
    """Compare the challenger (published to ``published_to``: the registry, or a dry run's scratch
    registry) with the champion; promote it unless this is a dry run."""
    challenger = read_version(published_to, req.model_name, version, cfg)
    head = current_champion(req.registry, req.model_name, cfg)
    champion = read_version(req.registry, req.model_name, head.version, cfg) if head else None
    verdict = decisions.decide(challenger, champion, cfg.registry, cfg.evaluate.condition_kind, context)
    decisions.write_decision(verdict, out)
    before = head.version if head else None
    result = RetrainResult("kept", EXIT_KEPT, version, before, before, run_id, sha, data_rev, verdict,
                           dry_run=req.dry_run, challenger_uri=challenger.uri)
    if verdict.outcome == decisions.GATE_FAILED:
        result.outcome, result.exit_code = "gate_failed", EXIT_GATE_FAILED
    elif verdict.outcome == decisions.PROMOTE and req.dry_run:
        result.outcome, result.exit_code = "would_promote", EXIT_PROMOTED
    elif verdict.outcome == decisions.PROMOTE:
        try:
            move_champion(req.registry, req.model_name, cfg, "promote", version, expect_champion=before,
                          reason=f"retrain {run_id}: " + "; ".join(verdict.reasons), decision=verdict.summary())
            result.outcome, result.exit_code, result.champion_after = "promoted", EXIT_PROMOTED, version
        except PromotionConflict as exc:
            result.outcome, result.exit_code, result.message = "conflict", EXIT_CONFLICT, str(exc)
        except RegistryIntegrityError as exc:
            result.outcome, result.exit_code, result.message = "unverified", EXIT_UNVERIFIED, str(exc)
    if not req.dry_run:
        decisions.record_decision(req.registry, req.model_name, verdict, out, cfg)
    result.message = result.message or "; ".join(verdict.reasons)
    if req.dry_run:
        result.message += f" (dry run: nothing written to the registry; the challenger is at {challenger.uri})"
    return result


def print_result(result: RetrainResult, out: Path, stream=None) -> None:
    stream = stream or sys.stdout
    if result.decision is not None:
        stream.write(decisions.render_markdown(result.decision))
    (out / "retrain.json").write_text(json.dumps(result.to_dict(out), indent=2) + "\n")
    stream.write(json.dumps(result.to_dict(out)) + "\n")
    stream.flush()

