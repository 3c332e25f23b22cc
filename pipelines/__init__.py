"""KFP pipelines of the project. ``training.py`` is the training pipeline; compile, submit,
schedule and run it locally with ``t2iops pipeline ...`` (see docs/pipelines.md)."""
