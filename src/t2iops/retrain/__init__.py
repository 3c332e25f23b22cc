"""``t2iops retrain``: the retraining loop that CI starts. It runs the training pipeline, then
compares the model the run published with the champion and promotes it or keeps the champion.

It drives both the pipelines and the registry, so it sits above both: the registry never needs
to know how a model was trained, and the pipeline only publishes (promotion is decided here or
by a person with ``t2iops registry``).

* :mod:`.loop` is the flow itself (compile, submit or run locally, wait, decide, promote).
* :mod:`.commands` declares ``t2iops retrain``, and ``t2iops registry`` with its default location.
"""
