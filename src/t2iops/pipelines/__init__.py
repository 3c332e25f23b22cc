"""Kubeflow Pipelines support: settings, build / compile / submit / schedule / run-local, the
Kubernetes objects of multi-node training and the small library code the components call.

The pipeline itself is ``pipelines/training.py`` (``build_pipeline``) and its components are
``components/*.py`` at the top of the repository (``t2iops._project`` once installed); this
package holds everything they share, so the components stay thin.
Nothing here imports torch.
"""
