"""The compiled training pipeline (KFP IR YAML): what it asks of the cluster, its control flow,
and that run parameters are checked, naming the parameter, before anything is sent."""
from __future__ import annotations

import json

import pytest
import yaml

from t2iops.config import load_config, stage_values
from t2iops.errors import UsageError
from t2iops.pipelines.compile import compile_pipeline, parse_cli_parameters, read_package, validate_arguments

CLUSTER_SPEC = load_config("params.yaml", ["model.base_model=s3://models/sdxl-tiny"])

SENTINEL = "sentinel-secret-value-7f3a"
GPU_STEPS = {"encode-shard", "train-adapter", "evaluate-shard", "export-adapter"}
CPU_STEPS = {"pull-dataset", "validate-dataset", "merge-cache", "merge-evaluation", "publish-model"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, monkeypatch_module):
    # Credentials in the environment must never reach the package.
    monkeypatch_module.setenv("AWS_ACCESS_KEY_ID", SENTINEL + "-id")
    monkeypatch_module.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL)
    path = compile_pipeline(tmp_path_factory.mktemp("ir") / "pipeline.yaml", image="registry.example/t2iops:test", cfg=CLUSTER_SPEC)
    text = path.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    return path, text, docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _tasks(spec: dict) -> dict:
    """Every task of every DAG, by task name."""
    out = {"": spec["root"]["dag"]["tasks"]}
    for name, comp in spec["components"].items():
        if "dag" in comp:
            out[name] = comp["dag"]["tasks"]
    return {t: body for tasks in out.values() for t, body in tasks.items()}


def test_every_step_runs_in_the_one_configured_image(compiled):
    _, _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/t2iops:test"}
    # kfp comes from the image: nothing is pip-installed when a step starts.
    assert not any("pip install" in " ".join(e["container"]["command"]) for e in executors.values())


def test_gpu_steps_request_gpus_on_the_gpu_pool_with_shm(compiled):
    _, _, spec, k8s = compiled
    executors = spec["deploymentSpec"]["executors"]
    for step in GPU_STEPS:
        res = executors[f"exec-{step}"]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
        assert res["resourceCpuRequest"] and res["resourceMemoryRequest"] == res["resourceMemoryLimit"]
        plat = k8s[f"exec-{step}"]
        assert plat["nodeSelector"]["labels"] == {"t2iops.io/pool": "gpu"}
        assert plat["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
        assert plat["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "16Gi"}]
    for step in CPU_STEPS:
        assert "accelerator" not in executors[f"exec-{step}"]["container"]["resources"]
        assert "nodeSelector" not in k8s[f"exec-{step}"] and "tolerations" not in k8s[f"exec-{step}"]
        assert executors[f"exec-{step}"]["container"]["resources"]["resourceMemoryRequest"]


def test_s3_credentials_come_from_the_secret_and_no_value_is_in_the_package(compiled):
    _, text, spec, k8s = compiled
    assert set(k8s) == set(spec["deploymentSpec"]["executors"])
    for plat in k8s.values():
        (secret,) = plat["secretAsEnv"]
        assert secret["secretName"] == "t2iops-s3"
        assert {(k["envVar"], k["secretKey"]) for k in secret["keyToEnv"]} == {
            ("AWS_ACCESS_KEY_ID", "aws_access_key_id"), ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key")}
    assert SENTINEL not in text
    assert "aws_secret_access_key:" not in text.replace("secretKey: aws_secret_access_key", "")
    for name, param in spec["root"]["inputDefinitions"]["parameters"].items():
        assert not any(word in name.lower() for word in ("secret", "password", "token", "access_key")), name


def test_train_retries_and_resumes_under_the_run_prefix(compiled):
    _, _, spec, _ = compiled
    train = _tasks(spec)["train-adapter"]
    assert train["retryPolicy"] == {"maxRetryCount": 3, "backoffDuration": "60s", "backoffFactor": 2.0, "backoffMaxDuration": "1800s"}
    inputs = train["inputs"]["parameters"]
    assert inputs["run_root"]["componentInputParameter"] == "run_root"
    assert _tasks(spec)["evaluate-shard"]["retryPolicy"]["maxRetryCount"] == 1
    # The run-id placeholder changes every run: as an input of a cached step it would defeat the cache.
    for name in ("train-adapter", "evaluate-shard", "encode-shard", "merge-cache", "validate-dataset", "merge-evaluation",
                 "export-adapter"):
        assert "pipeline_job_uuid" not in json.dumps(_tasks(spec)[name]["inputs"]), name


def test_caching_is_set_per_step(compiled):
    _, _, spec, _ = compiled
    tasks = _tasks(spec)
    assert tasks["pull-dataset"]["cachingOptions"] == {}  # off: a branch revision may move
    assert tasks["publish-model"]["cachingOptions"] == {}  # off: writes outside the pipeline root
    for name in ("validate-dataset", "encode-shard", "merge-cache", "train-adapter", "merge-evaluation", "export-adapter"):
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name


def _loop(spec: dict, sub_pipeline: str) -> dict:
    """The one ParallelFor of a sub-pipeline (loops of different sub-pipelines share task names)."""
    (loop,) = [t for t in spec["components"][f"comp-{sub_pipeline}"]["dag"]["tasks"].values() if "parameterIterator" in t]
    return loop


def test_encode_fans_out_over_shards_into_one_merged_cache(compiled):
    _, _, spec, _ = compiled
    tasks = _tasks(spec)
    loop = _loop(spec, "encode-shards")
    assert loop["taskInfo"]["name"] == "encode-shard"
    assert spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].keys() == {"encode-shard"}
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--shards"
    shards_in = tasks["encode-shards"]["inputs"]["parameters"]
    assert shards_in["shards"]["componentInputParameter"] == "encode_shards"
    assert shards_in["run_root"]["componentInputParameter"] == "run_root"
    assert {"dataset", "validated"} <= set(tasks["encode-shards"]["inputs"]["artifacts"])
    merge_in = tasks["merge-cache"]["inputs"]["parameters"]["slice_uris"]["taskOutputParameter"]
    assert merge_in == {"outputParameterKey": "Output", "producerTask": "encode-shards"}
    # Training reads the merged cache; the default is one shard (one GPU, as a single encode step).
    assert tasks["train-adapter"]["inputs"]["artifacts"]["cache"]["taskOutputArtifact"]["producerTask"] == "merge-cache"
    assert _defaults(spec)["encode_shards"] == [0]


def test_evaluation_fans_out_over_shards_and_export_is_gated(compiled):
    _, _, spec, _ = compiled
    tasks = _tasks(spec)
    loop = _loop(spec, "evaluate-shards")
    assert loop["taskInfo"]["name"] == "shard"
    assert spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].keys() == {"evaluate-shard"}
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--shards"
    assert tasks["evaluate-shards"]["inputs"]["parameters"]["shards"]["componentInputParameter"] == "eval_shards"
    merge_in = tasks["merge-evaluation"]["inputs"]["parameters"]["shard_uris"]["taskOutputParameter"]
    assert merge_in["producerTask"] == "evaluate-shards"
    gate = spec["root"]["dag"]["tasks"]["condition-1"]
    assert gate["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--merge-evaluation-Output'] == true"
    assert set(spec["components"]["comp-condition-1"]["dag"]["tasks"]) == {"export-adapter", "publish-model"}
    assert set(spec["root"]["dag"]["tasks"]) == {
        "pull-dataset", "validate-dataset", "encode-shards", "merge-cache", "train-adapter", "evaluate-shards",
        "merge-evaluation", "condition-1"}


def test_default_parameters_are_valid_and_bad_ones_are_named(compiled):
    path, _, spec, _ = compiled
    assert validate_arguments(spec, {}) == {}
    cases = {
        "eval_shards": {"eval_shards": [0, 2]},
        "'encode_shards' must be": {"encode_shards": [1]},
        "'git_sha' must be a commit id": {"git_sha": "HEAD; rm -rf"},
        "train.lr": {"config_train": json.dumps({"train": {"lr": -1}})},
        "nonsense": {"config_train": "nonsense.key: 1"},
        "which the train stage does not read": {"config_train": json.dumps({"evaluate": {"num_samples": 3}})},
        "dvc_repo": {"data_source": "dvc"},
        "train_nodes": {"train_nodes": 0},
        "model_name": {"model_name": "bad name!"},
        "unknown pipeline parameter": {"eval_shard": [0]},
        "'gpus_per_node' must be number integer": {"gpus_per_node": "two"},
    }
    for fragment, arguments in cases.items():
        with pytest.raises(UsageError, match=fragment):
            validate_arguments(spec, arguments)
    typed = parse_cli_parameters(["eval_shards=[0,1,2]", "encode_shards=[0,1]", "train_nodes=2", "dvc_rev=v1.0",
                                  "config_train={train.lr: 1.0e-5}", "git_sha=" + "ab12" * 10], spec)
    assert typed == {"eval_shards": [0, 1, 2], "encode_shards": [0, 1], "train_nodes": 2, "dvc_rev": "v1.0",
                     "config_train": "{train.lr: 1.0e-5}", "git_sha": "ab12" * 10}
    assert validate_arguments(spec, typed) is typed
    with pytest.raises(UsageError, match="unknown pipeline parameter 'shards'"):
        parse_cli_parameters(["shards=[0]"], spec)
    assert read_package(path)["pipelineInfo"]["name"] == "t2iops-training"


def test_multinode_settings_compile_a_cpu_launcher_with_the_job_settings(tmp_path):
    settings = yaml.safe_load(open("pipelines/settings.yaml"))
    settings["train_launcher"]["kind"] = "trainjob"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(settings))
    text = compile_pipeline(tmp_path / "p.yaml", settings=tmp_path / "s.yaml").read_text()
    spec, platform = [d for d in yaml.safe_load_all(text) if d]
    executor = spec["deploymentSpec"]["executors"]["exec-train-adapter-multinode"]
    assert "accelerator" not in executor["container"]["resources"]
    assert "nodeSelector" not in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-adapter-multinode"]
    task = _tasks(spec)["train-adapter-multinode"]
    assert task["retryPolicy"]["maxRetryCount"] == 3
    shipped = json.loads(task["inputs"]["parameters"]["launcher_settings"]["runtimeValue"]["constant"])
    assert shipped["train_launcher"]["kind"] == "trainjob" and shipped["s3_secret"]["name"] == "t2iops-s3"
    assert shipped["gpu_pool"]["node_selector"] == {"t2iops.io/pool": "gpu"}


def test_settings_errors_name_the_key(tmp_path):
    (tmp_path / "s.yaml").write_text("steps:\n  train:\n    memory: lots\n")
    with pytest.raises(UsageError, match=r"steps\.train\.memory"):
        compile_pipeline(tmp_path / "p.yaml", settings=tmp_path / "s.yaml")
    (tmp_path / "t.yaml").write_text("gpu_pool:\n  colour: green\n")
    with pytest.raises(UsageError, match=r"gpu_pool\.colour"):
        compile_pipeline(tmp_path / "p.yaml", settings=tmp_path / "t.yaml")


def _defaults(spec: dict) -> dict:
    return {n: p.get("defaultValue") for n, p in spec["root"]["inputDefinitions"]["parameters"].items()}


def test_compile_bakes_the_run_spec_in_and_each_step_gets_only_its_sections(compiled, tmp_path):
    _, _, spec, _ = compiled
    defaults = _defaults(spec)
    # params.yaml's values, not the schema's defaults: the circle-IoU gate.
    evaluate = json.loads(defaults["config_evaluate"])
    assert evaluate["evaluate"]["num_samples"] == 64 and evaluate["evaluate"]["gate"]["min_circle_iou"] == 0.7
    for stage in ("pull", "validate", "encode", "train", "evaluate", "export", "publish"):
        assert json.loads(defaults[f"config_{stage}"]) == stage_values(CLUSTER_SPEC, stage), stage
    for step in ("encode-shards", "merge-cache"):
        assert _tasks(spec)[step]["inputs"]["parameters"]["config"] == {"componentInputParameter": "config_encode"}, step

    # -S train.lr changes the package, and only what train, evaluate's validation twin... reads:
    # the parameters feeding pull, validate and encode are byte-identical, so their cache keys are.
    other = load_config("params.yaml", ["model.base_model=s3://models/sdxl-tiny", "train.lr=1e-5"])
    spec2 = read_package(compile_pipeline(tmp_path / "lr.yaml", image="registry.example/t2iops:test", cfg=other))
    changed = {n for n, v in _defaults(spec2).items() if v != defaults[n]}
    assert changed == {"config_train", "config_publish"}  # publish records the whole spec; it is never cached
    for step in ("pull-dataset", "validate-dataset", "encode-shards", "merge-cache"):
        assert _tasks(spec2)[step]["inputs"] == _tasks(spec)[step]["inputs"], step


def test_train_and_merge_steps_output_kfp_v2_metrics_artifacts(compiled):
    """The v2 UI shows system.Metrics output artifacts (the v1 mlpipeline-metrics file is ignored)."""
    _, _, spec, _ = compiled
    tasks = _tasks(spec)
    for task in ("train-adapter", "merge-evaluation"):
        component = spec["components"][tasks[task]["componentRef"]["name"]]
        outputs = component["outputDefinitions"]["artifacts"]
        assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics", task
    assert "mlpipeline-metrics" not in json.dumps(spec)


def test_kfp_task_settings_keep_their_caller_checks_with_the_cheap_stack(tmp_path):
    """kfp's task setters look up their own name with ``inspect.stack()``; while a pipeline is
    built, t2iops gives that module a stack without source reads (9 s -> 1 s per compile in a
    process with torch loaded), and gives it back its ``inspect`` afterwards. The check it serves
    still names the method, and a real step still takes the settings."""
    import inspect

    from kfp.dsl import pipeline_task

    from t2iops.pipelines.kfp_workarounds import quick_caller_names

    assert pipeline_task.inspect is inspect  # nothing is changed at import
    with quick_caller_names():
        assert pipeline_task.inspect is not inspect and pipeline_task.inspect.getmodule is inspect.getmodule
        frames = pipeline_task.inspect.stack()
        _check_settings_on_a_real_step(tmp_path)
    assert pipeline_task.inspect is inspect
    assert frames[0][3] == "test_kfp_task_settings_keep_their_caller_checks_with_the_cheap_stack"
    assert frames[0][1] == __file__ and frames[0][0].f_back is frames[1][0]


def _check_settings_on_a_real_step(tmp_path):
    from kfp import compiler, dsl

    import t2iops.pipelines.platform as platform

    @dsl.component(base_image="python:3.11")
    def step():
        print("x")

    @dsl.pipeline
    def inner():
        step()

    with pytest.raises(ValueError, match=r"^set_memory_limit can only be used on single-step components"):
        @dsl.pipeline
        def outer():
            inner().set_memory_limit("1G")

    @dsl.pipeline
    def ok():
        platform.configure_step(step(), "merge", platform.PipelineSettings())

    compiler.Compiler().compile(ok, str(tmp_path / "ok.yaml"))
    spec = next(yaml.safe_load_all((tmp_path / "ok.yaml").read_text()))
    resources = spec["deploymentSpec"]["executors"]["exec-step"]["container"]["resources"]
    assert (resources["cpuRequest"], resources["memoryLimit"]) == (1.0, 4 * 2**30 / 1e9)  # merge: 1 CPU, 4Gi (in GB)
