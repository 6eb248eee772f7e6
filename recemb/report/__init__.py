"""The run report (``<run>/report.html``) and the TensorBoard embedding-projector export.

- :mod:`.config`    ``ReportConfig``, the ``report:`` section of a pipeline YAML
- :mod:`.html`      ``run_report(...)``, the pipeline stage: ``<run>/projector/<model>/``
                    for every EmbeddingSet, then the self-contained HTML report
- :mod:`.plots`     matplotlib figures (loss curves, 2-D maps, metric bars)
- :mod:`.projector` ``export_projector``: TensorBoard projector files
"""
