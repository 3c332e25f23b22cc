"""The model registry: published adapter versions, the champion pointer, promotion decisions.

Layout under ``<registry>/<model_name>/`` (S3 prefix or folder)::

    <version>/                     a published model (t2iops.pipelines.registry.publish_model)
    latest.json                    the last version published (not necessarily the champion)
    champion.json                  the pointer serving reads: the current champion
    champion-history/<gen>.json    append-only: one record per promotion or rollback
    decisions/<time>-<version>/    recorded champion-vs-challenger decisions

* :mod:`.pointer` moves the champion (create-only history records, the pointer written last).
* :mod:`.decision` applies the ``registry`` section of the configuration to two versions.
* :mod:`.versions` reads what a version holds (manifest, metrics, lineage).
* :mod:`.retrain` is ``t2iops retrain``: run the pipeline, compare, promote or keep.
"""
