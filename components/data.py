"""Data stage: bring the dataset into the pipeline (DVC at a git revision, a path or s3:// URI,
or the synthetic circles), then validate it. Wraps :mod:`t2iops.pipelines.sources` and
:func:`t2iops.data.validate.validate`."""
from kfp.dsl import Dataset, Input, Markdown, Output


def pull_dataset(
    source: str,
    dvc_repo: str,
    dvc_rev: str,
    dvc_path: str,
    dvc_remote: str,
    config: str,
    dataset: Output[Dataset],
):
    """source: 'dvc' (dvc_path of the git repo dvc_repo at dvc_rev, from its DVC remote on S3;
    credentials from the environment), 'synth' (data.synth.*), or a folder / s3:// URI."""
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.sources import pull_dataset as pull

    cfg = stage_config(config, "pull")
    info = pull(source, dataset.path, cfg, dvc_repo=dvc_repo, dvc_rev=dvc_rev, dvc_path=dvc_path, dvc_remote=dvc_remote)
    dataset.metadata.update(info)


def validate_dataset(dataset: Input[Dataset], config: str, validated: Output[Dataset], report: Output[Markdown]):
    """Writes validated/{report.json, quarantine.jsonl, rows.jsonl}; fails above data.max_bad_fraction."""
    from t2iops.data.validate import validate
    from t2iops.pipelines.runtime import stage_config
    from t2iops.pipelines.reports import validation_markdown

    cfg = stage_config(config, "validate")
    summary = validate(dataset.path, validated.path, cfg)
    validated.metadata.update({k: summary[k] for k in ("rows", "good", "bad", "status")})
    with open(report.path, "w") as fh:
        fh.write(validation_markdown(summary))
