"""`curate report`: PNG figures and one static HTML page from runs, scores and manifests."""

from curate.report.build import INDEX_FILE, ReportConfig, ReportSummary, report
from curate.report.load import classify, detect_kind

__all__ = ["INDEX_FILE", "ReportConfig", "ReportSummary", "classify", "detect_kind", "report"]
