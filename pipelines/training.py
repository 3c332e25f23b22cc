"""The T2I-Adapter training pipeline.

    pull -> validate -> encode (ParallelFor over shards) -> merge cache -> train
         -> evaluate (ParallelFor over shards) -> merge + gate
         -> if the gate passed: export -> publish (to the model registry prefix)

Run parameters (all have defaults; ``t2iops pipeline submit -p name=value``):
  config_<stage>  the configuration sections one stage reads (config.STAGE_SECTIONS), JSON; the
                  defaults are the run specification resolved at compile time (params.yaml +
                  --params/-S), so the KFP UI runs what params.yaml says. Each step gets only its
                  own: changing train.lr misses the cache of train/evaluate/export only.
  data_source     'dvc' | 'synth' | a folder or s3:// URI of a dataset (default: data.root, or
                  'synth' when data.root is data/circles, the toy preset's synthetic circles)
  dvc_repo/dvc_rev/dvc_path/dvc_remote   the DVC-tracked dataset when data_source is 'dvc'
  run_root        prefix for the run's durable files (checkpoints, encode and evaluation shards)
  encode_shards   the encode shards, [0, 1, ..., n-1] (one GPU each; default one)
  eval_shards     the evaluation shards, [0, 1, ..., n-1]
  train_nodes, gpus_per_node   size of the multi-node job (train_launcher.kind != in-pod)
  registry_uri, model_name, model_version   where the model is published (version: the run id)
  git_sha         the commit of the code the run was built from, recorded in lineage.json

:func:`build_pipeline` is a plain function of the run specification (the resolved
configuration) and the cluster-facing settings (image, GPU pool, resources, retries, caching,
launcher: pipelines/settings.yaml); it returns the KFP pipeline, which ``t2iops pipeline compile``
compiles and ``t2iops pipeline run-local`` runs. Importing this module reads nothing.
"""
from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from t2iops.config import Config
from t2iops.pipelines.platform import configure_step
from t2iops.pipelines.runtime import stage_parameters
from t2iops.pipelines.settings import PipelineSettings, default_data_source

from ..components import build_components

PIPELINE_NAME = "t2iops-training"
RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # publish only (uncached): the default model version


def _cpu_train_steps(settings: PipelineSettings):
    """The multi-node launcher's pod only creates and awaits the job: no GPU, little memory."""
    steps = settings.steps.model_copy(deep=True)
    steps.train.gpus = 0
    steps.train.cpu, steps.train.memory = "1", "2Gi"
    return steps


def build_pipeline(spec: Config, settings: PipelineSettings):
    """The training pipeline for one run specification and one cluster. ``spec`` becomes the
    defaults of the ``config_<stage>`` parameters (each holding only the sections its stage
    reads), so the package runs what params.yaml says even when started from the KFP UI."""
    # Long: the pipeline's graph, one step after another, reads best in one piece
    steps = build_components(settings.image)
    config = stage_parameters(spec)  # {"config_<stage>": JSON of the sections that stage reads}

    @dsl.pipeline(name="encode-shards", description="Encode every slice of the validated rows in parallel.")
    def encode_in_shards(
        dataset: Input[Dataset], validated: Input[Dataset], config: str, shards: List[int], run_root: str,
    ) -> List[str]:
        with dsl.ParallelFor(shards, name="encode-shard") as shard_index:
            shard = steps.encode_shard(
                dataset=dataset, validated=validated, config=config, shard_index=shard_index, shards=shards,
                run_root=run_root,
            )
            configure_step(shard, "encode", settings, "encode shard")
        return dsl.Collected(shard.output)

    @dsl.pipeline(name="evaluate-shards", description="Evaluate every shard of the test split in parallel.")
    def evaluate_shards(
        model: Input[Model], dataset: Input[Dataset], validated: Input[Dataset], config: str,
        shards: List[int], run_root: str,
    ) -> List[str]:
        with dsl.ParallelFor(shards, name="shard") as shard_index:
            shard = steps.evaluate_shard(
                model=model, dataset=dataset, validated=validated, config=config,
                shard_index=shard_index, shards=shards, run_root=run_root,
            )
            configure_step(shard, "evaluate", settings, "evaluate shard")
        return dsl.Collected(shard.output)

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, evaluate, export and publish a T2I-Adapter.")
    def training_pipeline(
        config_pull: str = config["config_pull"],
        config_validate: str = config["config_validate"],
        config_encode: str = config["config_encode"],
        config_train: str = config["config_train"],
        config_evaluate: str = config["config_evaluate"],
        config_export: str = config["config_export"],
        config_publish: str = config["config_publish"],
        data_source: str = default_data_source(spec),
        dvc_repo: str = "",
        dvc_rev: str = "main",
        dvc_path: str = "data/circles",
        dvc_remote: str = "",
        run_root: str = settings.defaults.run_root,
        encode_shards: List[int] = [0],
        eval_shards: List[int] = [0, 1],
        train_nodes: int = 1,
        gpus_per_node: int = 1,
        registry_uri: str = settings.defaults.registry_uri,
        model_name: str = "t2i-adapter",
        model_version: str = "",
        git_sha: str = "",
    ) -> bool:
        pull = steps.pull_dataset(
            source=data_source, dvc_repo=dvc_repo, dvc_rev=dvc_rev, dvc_path=dvc_path,
            dvc_remote=dvc_remote, config=config_pull,
        )
        configure_step(pull, "pull", settings)
        dataset = pull.outputs["dataset"]

        validate = steps.validate_dataset(dataset=dataset, config=config_validate)
        configure_step(validate, "validate", settings)
        validated = validate.outputs["validated"]

        slices = encode_in_shards(
            dataset=dataset, validated=validated, config=config_encode, shards=encode_shards, run_root=run_root,
        ).set_display_name("encode")
        encode = steps.merge_cache(slice_uris=slices.output, config=config_encode)
        configure_step(encode, "merge", settings, "merge encode shards")

        if settings.train_launcher.kind == "in-pod":
            train = steps.train_adapter(cache=encode.outputs["cache"], config=config_train, run_root=run_root)
            configure_step(train, "train", settings)
        else:
            # The pod only launches and awaits the job: it needs no GPU, but keeps the retries.
            train = steps.train_adapter_multinode(
                cache=encode.outputs["cache"], config=config_train, run_root=run_root,
                nodes=train_nodes, gpus_per_node=gpus_per_node,
                launcher_settings=settings.model_dump_json(by_alias=True),
            )
            configure_step(train, "train", settings.model_copy(update={"steps": _cpu_train_steps(settings)}),
                           "launch training")
        model = train.outputs["model"]

        shards = evaluate_shards(
            model=model, dataset=dataset, validated=validated, config=config_evaluate,
            shards=eval_shards, run_root=run_root,
        ).set_display_name("evaluate")
        merge = steps.merge_evaluation(shard_uris=shards.output, config=config_evaluate)
        configure_step(merge, "merge", settings, "merge + gate")
        gate_passed = merge.outputs["Output"]
        evaluation = merge.outputs["evaluation"]

        with dsl.If(gate_passed == True, name="gate-passed"):  # noqa: E712 (a pipeline expression)
            export = steps.export_adapter(
                model=model, evaluation=evaluation, dataset=dataset, config=config_export, git_sha=git_sha,
            )
            configure_step(export, "export", settings)
            publish = steps.publish_model(
                onnx=export.outputs["onnx"], evaluation=evaluation, dataset=dataset, config=config_publish,
                registry_uri=registry_uri, model_name=model_name, model_version=model_version, run_id=RUN_ID,
                git_sha=git_sha,
            )
            configure_step(publish, "publish", settings)
        return gate_passed

    return training_pipeline
