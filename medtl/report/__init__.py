"""medtl.report: the self-contained HTML report of a run, its figures and de-identification.

Names are imported lazily, so ``import medtl.report`` loads neither matplotlib nor
TensorFlow until they are used.

Example:
    >>> from medtl.report import write_report
    >>> write_report("runs/demo/cv-1a2b3c4d5e", "report.html")
    PosixPath('report.html')
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "write_report": "medtl.report.html",
    "render_html": "medtl.report.html",
    "export_pdf": "medtl.report.html",
    "PHIError": "medtl.report.html",
    "ReportWarning": "medtl.report.html",
    "ExternalResourceError": "medtl.report.html",
    "write_evaluation_report": "medtl.report.evaluation",
    "ReportData": "medtl.report.data",
    "collect_report_data": "medtl.report.data",
    "select_cases": "medtl.report.gallery",
    "render_gallery": "medtl.report.gallery",
    "hash_patient_id": "medtl.report.deid",
    "run_salt": "medtl.report.deid",
    "find_phi": "medtl.report.deid",
    "scrub_text": "medtl.report.deid",
    "PHI_TAGS": "medtl.report.deid",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medtl.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
