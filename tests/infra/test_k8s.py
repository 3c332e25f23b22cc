"""The Kubernetes side, offline: every kustomize overlay rendered and validated against the
Kubernetes schemas (kubernetes-validate) and, for Kubeflow kinds, against the schema subsets in
infra/k8s/schemas (check-jsonschema); the TrainJobs trainjob.py renders checked the same way;
and the settings, manifests, node-pool definitions and Dockerfile agreeing on every shared name."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kustomize_lite import render
from t2iops.pipelines.settings import PipelineSettings, load_settings
from t2iops.pipelines.trainjob import job_object, spec_from_settings

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.33.0"  # the oldest Kubernetes minor the overlays must apply to
TRAINER_VERSION = "v2.3.0"
CRD_SCHEMAS = {"TrainJob": "trainjob", "ClusterTrainingRuntime": "clustertrainingruntime",
               "Profile": "profile", "PodDefault": "poddefault", "InferenceService": "inferenceservice"}
TEMPLATES = sorted((K8S / "base").glob("*.template.yaml"))


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def check_jsonschema(schema: str, objects: list[dict], tmp_path: Path):
    """check-jsonschema's command line, run in this process (its import alone takes seconds)."""
    main = pytest.importorskip("check_jsonschema.cli.main_command", reason="check-jsonschema not installed (test extra)").main
    from click.testing import CliRunner

    files = []
    for i, obj in enumerate(objects):
        files.append(tmp_path / f"{schema}-{i}.json")
        files[-1].write_text(json.dumps(obj))
    return CliRunner().invoke(main, ["--schemafile", str(K8S / "schemas" / f"{schema}.schema.json"), *map(str, files)])


def test_the_overlays_are_dev_and_prod():
    assert OVERLAYS == ["dev", "prod"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_like_kustomize(overlay):
    mine = {(o["kind"], o["metadata"]["name"]): o for o in render(K8S / "overlays" / overlay)}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here to compare with; the rendering is still validated below")
    done = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    real = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(done.stdout) if o}
    assert mine == real


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_are_valid(overlay, tmp_path):
    objects = render(K8S / "overlays" / overlay)
    for obj in objects:
        if obj["kind"] in CRD_SCHEMAS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    for kind, schema in CRD_SCHEMAS.items():
        found = by_kind(objects, kind)
        if kind != "TrainJob":
            assert found, f"{overlay} has no {kind}"
            done = check_jsonschema(schema, found, tmp_path)
            assert done.exit_code == 0, done.output
    # Every pod template of the runtime is a valid Job spec.
    (runtime,) = by_kind(objects, "ClusterTrainingRuntime")
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        as_job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job["name"]}, "spec": job["template"]["spec"]}
        kubernetes_validate.validate(as_job, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_secret_templates_are_valid_and_hold_no_values(template):
    (obj,) = [d for d in yaml.safe_load_all(template.read_text()) if d]
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert obj["kind"] == "Secret" and "data" not in obj
    assert all(v in ("", '{"auths": {}}') for v in obj["stringData"].values())
    for overlay in OVERLAYS:
        assert obj["metadata"]["name"] not in {o["metadata"]["name"] for o in by_kind(render(K8S / "overlays" / overlay), "Secret")}


def _trainjob(settings: PipelineSettings) -> dict:
    spec = spec_from_settings(settings, run_id="0b5e-run", namespace="t2iops", nodes=2, gpus_per_node=8,
                              cache_uri="s3://b/runs/enc", out_uri="s3://b/runs/0b5e/train", config_yaml="train: {}\n")
    return job_object("trainjob", spec)


def test_trainjobs_match_the_trainer_api(tmp_path):
    settings = load_settings()
    good = [_trainjob(settings), _trainjob(settings.model_copy(update={"s3_secret": None}))]
    done = check_jsonschema("trainjob", good, tmp_path)
    assert done.exit_code == 0, done.output
    # The subset is closed where the CRD is: a field the Trainer would drop is an error here.
    bad = _trainjob(settings)
    pod = bad["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][1]
    pod["template"]["spec"]["template"]["spec"]["containers"][0]["image"] = settings.image
    done = check_jsonschema("trainjob", [bad], tmp_path)
    assert done.exit_code == 1 and "'image' was unexpected" in done.output


def test_schemas_and_runtime_name_one_trainer_version():
    for schema in (K8S / "schemas").glob("*.schema.json"):
        title = json.loads(schema.read_text())["title"]
        if "Kubeflow Trainer" in title:
            assert TRAINER_VERSION in title, schema.name
    runtime = yaml.safe_load((K8S / "runtime" / "clustertrainingruntime.yaml").read_text())
    assert runtime["metadata"]["labels"]["t2iops.io/trainer-version"] == TRAINER_VERSION
    assert TRAINER_VERSION in (K8S / "runtime" / "kustomization.yaml").read_text()


# -- One source of truth ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered():
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def _runtime_pods(objects):
    (runtime,) = by_kind(objects, "ClusterTrainingRuntime")
    return runtime, [j["template"]["spec"]["template"]["spec"] for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]]


def test_namespace_is_the_profile_namespace(rendered):
    for overlay, objects in rendered.items():
        namespace = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())["namespace"]
        (profile,) = by_kind(objects, "Profile")
        assert profile["metadata"]["name"] == namespace, overlay
        for obj in objects:
            if obj["kind"] not in ("PriorityClass",):
                assert obj["metadata"].get("namespace") == namespace, (overlay, obj["kind"])


def test_image_runtime_and_service_account_agree_with_the_settings(rendered):
    settings = load_settings()
    assert PipelineSettings().image == settings.image, "settings.py's default mirrors pipelines/settings.yaml"
    for overlay, objects in rendered.items():
        runtime, pods = _runtime_pods(objects)
        assert runtime["metadata"]["name"] == settings.train_launcher.trainjob_runtime
        assert _trainjob(settings)["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
        assert {c["image"] for pod in pods for c in pod["containers"]} == {settings.image}, overlay
        (priority,) = by_kind(objects, "PriorityClass")
        assert {pod["priorityClassName"] for pod in pods} == {priority["metadata"]["name"]}
        (sa,) = by_kind(objects, "ServiceAccount")
        assert sa["metadata"]["name"] == settings.train_launcher.service_account
        (binding,) = by_kind(objects, "RoleBinding")
        assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
        registry_secret = yaml.safe_load((K8S / "base" / "registry-secret.template.yaml").read_text())
        assert sa["imagePullSecrets"] == [{"name": registry_secret["metadata"]["name"]}]
    irsa = {o: by_kind(objs, "ServiceAccount")[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            for o, objs in rendered.items()}
    assert irsa["dev"] == "" and irsa["prod"].startswith("arn:aws:iam::")


def test_s3_secret_keys_agree(rendered):
    settings = load_settings()
    template = yaml.safe_load((K8S / "base" / "s3-secret.template.yaml").read_text())
    assert template["metadata"]["name"] == settings.s3_secret.name
    assert set(template["stringData"]) == set(settings.s3_secret.keys.values())
    for objects in rendered.values():
        (poddefault,) = by_kind(objects, "PodDefault")
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in poddefault["spec"]["env"]}
        assert {name: (r["name"], r["key"]) for name, r in refs.items()} == {
            env: (settings.s3_secret.name, key) for env, key in settings.s3_secret.keys.items()}


def _gke_flags() -> dict[str, str]:
    text = (ROOT / "infra" / "cluster" / "gke-gpu-nodepool.sh").read_text()
    return dict(re.findall(r'--(node-labels|node-taints) "([^"]+)"', text))


def test_gpu_pool_agrees_across_settings_runtime_and_node_pools(rendered):
    pool = load_settings().gpu_pool
    tolerations = [t.model_dump(exclude_none=True) for t in pool.tolerations]
    taints = [{"key": t["key"], "value": t["value"], "effect": t["effect"]} for t in tolerations]
    for objects in rendered.values():
        _, pods = _runtime_pods(objects)
        for pod in pods:
            assert pod["nodeSelector"] == pool.node_selector and pod["tolerations"] == tolerations
        quota = by_kind(objects, "ResourceQuota")[0]["spec"]["hard"]
        limit = by_kind(objects, "LimitRange")[0]["spec"]["limits"][0]["max"]
        assert f"requests.{pool.accelerator_type}" in quota and pool.accelerator_type in limit
        assert int(limit[pool.accelerator_type]) <= int(quota[f"requests.{pool.accelerator_type}"])
    eks = yaml.safe_load((ROOT / "infra" / "cluster" / "eksctl-gpu-nodegroup.yaml").read_text())["managedNodeGroups"][0]
    assert eks["labels"] == pool.node_selector and eks["taints"] == taints
    gke = _gke_flags()
    assert gke["node-labels"] == ",".join(f"{k}={v}" for k, v in pool.node_selector.items())
    assert gke["node-taints"] == ",".join(f"{t['key']}={t['value']}:{t['effect']}" for t in taints)


def test_runtime_ssh_user_is_the_image_user(rendered):
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    (uid, user) = re.findall(r"useradd --create-home --uid (\d+) (\S+)", dockerfile)[0]
    runtime, pods = _runtime_pods(rendered["prod"])
    assert runtime["spec"]["mlPolicy"]["mpi"]["sshAuthMountPath"] == f"/home/{user}/.ssh"
    for pod in pods:
        assert pod["securityContext"]["fsGroup"] == int(uid)
        assert all(c["securityContext"]["runAsUser"] == int(uid) for c in pod["containers"])
    sshd = [c for pod in pods for c in pod["containers"] if c.get("command") == ["/usr/sbin/sshd"]]
    assert sshd and sshd[0]["args"][-1] == f"/home/{user}/.sshd_config" and f"> /home/{user}/.sshd_config" in dockerfile
    port = sshd[0]["readinessProbe"]["tcpSocket"]["port"]
    assert f"'Port {port}'" in dockerfile and f"'  Port {port}'" in dockerfile


# -- Serving ---------------------------------------------------------------------------------
def _predictor_as_pod(isvc: dict) -> dict:
    """The predictor's pod fields as a Pod, for the strict Kubernetes schema."""
    pod_fields = {"serviceAccountName", "nodeSelector", "tolerations", "securityContext", "containers", "volumes",
                  "priorityClassName", "imagePullSecrets"}
    spec = {k: v for k, v in isvc["spec"]["predictor"].items() if k in pod_fields}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": spec}


def test_inference_service_serves_the_pipelines_registry_with_its_image_secret_and_pool(rendered, tmp_path):
    from t2iops.cli import build_parser

    settings = load_settings()
    for overlay, objects in rendered.items():
        (isvc,) = by_kind(objects, "InferenceService")
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        kubernetes_validate.validate(_predictor_as_pod(isvc), KUBERNETES_VERSION, strict=True)
        predictor = isvc["spec"]["predictor"]
        (container,) = predictor["containers"]
        assert container["image"] == settings.image and container["imagePullPolicy"] == settings.image_pull_policy
        assert predictor["serviceAccountName"] == settings.train_launcher.service_account
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert {name: (r["name"], r["key"]) for name, r in refs.items()} == {
            env: (settings.s3_secret.name, key) for env, key in settings.s3_secret.keys.items()}
        assert all(r["optional"] for r in refs.values()), "IRSA (no secret) must work too"
        pool = settings.gpu_pool
        assert predictor["nodeSelector"] == pool.node_selector
        assert predictor["tolerations"] == [t.model_dump(exclude_none=True) for t in pool.tolerations]
        assert container["resources"]["limits"][pool.accelerator_type] == "1"
        # The command is a real `t2iops serve` command line, on the registry the pipeline publishes to.
        assert container["command"] == ["t2iops"]
        args = build_parser().parse_args(container["args"])
        assert args.command == "serve" and args.adapter == "registry:champion"
        assert args.registry == settings.defaults.registry_uri and args.host == "0.0.0.0"
        (port,) = container["ports"]
        assert port["containerPort"] == args.port
        assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": args.port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": args.port}
        assert args.model_name in ("t2i-adapter", isvc["metadata"]["name"])
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    uid = int(re.findall(r"useradd --create-home --uid (\d+)", dockerfile)[0])
    assert container["securityContext"]["runAsUser"] == uid
    # a stopped pod is killed only after the server's own graceful shutdown has had its time
    from t2iops.serve.server import GRACEFUL_SHUTDOWN_S

    assert isvc["spec"]["predictor"]["terminationGracePeriodSeconds"] > GRACEFUL_SHUTDOWN_S


def test_inference_service_schema_is_closed_where_the_crd_is(rendered, tmp_path):
    (isvc,) = by_kind(rendered["prod"], "InferenceService")
    assert check_jsonschema("inferenceservice", [isvc], tmp_path).exit_code == 0
    misspelt = json.loads(json.dumps(isvc))
    misspelt["spec"]["predictor"]["minReplica"] = 1
    done = check_jsonschema("inferenceservice", [misspelt], tmp_path)
    assert done.exit_code == 1 and "'minReplica' was unexpected" in done.output
    bad_probe = json.loads(json.dumps(isvc))
    bad_probe["spec"]["predictor"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/v2/health/ready"
    assert check_jsonschema("inferenceservice", [bad_probe], tmp_path).exit_code == 1
