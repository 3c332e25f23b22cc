"""Kubeflow Pipelines support: settings, compile / submit / schedule / run-local, the
multi-node training manifests and the small library code the components call.

The pipeline itself is ``pipelines/training.py`` and its components are ``components/*.py`` in
the project checkout; this package holds everything they share, so the components stay thin.
Nothing here imports torch.
"""
