"""Generate with a trained adapter, and serve the registry's champion.

It loads from the registry, the export and the training output, and samples as the evaluation
does, so it sits above all of them, beside ``retrain``:

* :mod:`.loading` finds an adapter (a folder, a training output, an export, ``registry:champion``
  or ``registry:<version>``), copies the files it needs after checking each against the
  ``_manifest.json`` it was published with, and loads it with PyTorch or onnxruntime.
* :mod:`.engine` is the inference core: the base model loaded once, an adapter, request checks
  (:class:`~.engine.BadRequest`) and generation with the evaluation's sampler.
* :mod:`.generate` and :mod:`.commands`: ``t2iops generate``.
* :mod:`.server`, :mod:`.oip`, :mod:`.watch`, :mod:`.serve_command`: ``t2iops serve``, the model
  server that runs the engine on the registry's champion and follows it.
"""
