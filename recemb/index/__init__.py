"""Top-k indexes over EmbeddingSet vectors: exact and Annoy, plus safe export/load (DESIGN.md §5, §6).

- :mod:`.base`        the ``Index`` ABC (argument checks, padding), ``RecembIndexError``
- :mod:`.exact`       ``ExactIndex``: brute force over numpy
- :mod:`.annoy_index` ``AnnoyIndex`` (annoy is the optional extra ``recemb[index]``)
- :mod:`.export`      ``export_index`` / ``load_index`` / ``export_all`` with manifests
- :mod:`.stage`       ``export_run``: the pipeline's export stage
- :mod:`.config`      ``ExportConfig``, the ``export:`` section of a pipeline YAML
"""
