"""`curate report`: PNG figures and one static HTML page from runs, scores and manifests."""

from curate.report.build import INDEX_FILE, ReportConfig, ReportSummary, report
from curate.report.load import detect_kind

__all__ = ["INDEX_FILE", "ReportConfig", "ReportSummary", "detect_kind", "report"]
