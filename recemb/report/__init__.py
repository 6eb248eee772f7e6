"""The run report (``<run>/report.html``) and the TensorBoard embedding-projector export.

``run_report(cfg)`` is the pipeline stage: it writes ``<run>/projector/<model>/``
for every EmbeddingSet and then the self-contained HTML report.
"""

# html/plots pull in matplotlib and polars: load them on first use, so that
# reading a config (which imports ReportConfig from here) stays fast.
from recemb.lazy import lazy_exports  # noqa: E402
from recemb.report.config import ReportConfig

_LAZY = {"build_report": "html", "run_report": "html", "export_projector": "projector"}


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["ReportConfig", "build_report", "export_projector", "run_report"]
