"""The model registry: published adapter versions, the champion pointer, promotion decisions.

Layout under ``<registry>/<model_name>/`` (S3 prefix or folder)::

    <version>/                     a published model (t2iops.pipelines.registry.publish_model)
    latest.json                    the last version published (not necessarily the champion)
    champion.json                  a copy of the newest history record, checked against it
    champion-history/<gen>.json    append-only: one record per promotion or rollback (the truth)
    retired/<version>.json         create-only: versions that may never be champion again
    decisions/<time>-<version>/    recorded champion-vs-challenger decisions

* :mod:`.records` reads the history; :mod:`.pointer` checks the pointer against it, serves the
  champion and repairs the pointer; :mod:`.moves` promotes and rolls back (create-only history
  records, the pointer written last) through the conditional writes of :mod:`.store`.
* :mod:`.integrity` verifies every file of a version against its manifest before it is champion.
* :mod:`.retired` keeps versions that may never be champion again.
* :mod:`.decision` applies the ``registry`` section of the configuration to two versions and
  records the decision.
* :mod:`.versions` reads what a version holds (manifest, metrics, lineage).
* :mod:`.commands` declares the CLI; :mod:`.actions` runs the registry commands.

The registry is the model store and nothing more: it imports nothing from the pipelines that
publish to it nor from :mod:`t2iops.retrain`, which runs the pipeline and then promotes through
this package.
"""
