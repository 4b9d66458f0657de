"""Render a run into ONE self-contained HTML file, and optionally a PDF of it.

Every image is a ``data:`` URI and the CSS is inline, so the file opens anywhere, offline, and
can be mailed or archived as it is; :func:`write_report` checks that the page references no
external resource and that no raw patient id or DICOM PHI of the shown cases is in it.

Example:
    >>> from medtl.report import write_report
    >>> write_report("runs/demo/cv-1a2b3c4d5e", "report.html", pdf=True)
    PosixPath('report.html')
"""

from __future__ import annotations

import html as _html
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from medtl.explain.files import OFF_FILM_NOTE
from medtl.io.atomic import write_atomic
from medtl.report.data import FAITHFULNESS_PER_MODEL, Cell, ReportData, collect_report_data
from medtl.report.deid import deid_check, find_in_text
from medtl.report.gallery import NOT_COMPUTED
from medtl.report.model_card import build_model_card, write_model_card
from medtl.report.plots import data_uri

__all__ = ["write_report", "render_html", "export_pdf", "ExternalResourceError", "PHIError"]

TEMPLATE = "report.html.j2"
_TEMPLATES = Path(__file__).with_name("templates")
# Attributes and CSS that make a browser fetch something.
_EXTERNAL = re.compile(r"""(?:\b(?:src|href|srcset|poster|data|action)\s*=\s*["']?\s*|url\(\s*["']?|@import\s+["']?)"""
                       r"""(?:https?:|ftp:|//)""", re.IGNORECASE)
_DATA_URI = re.compile(r"data:[\w.+/-]*;base64,[A-Za-z0-9+/=]+")


class ExternalResourceError(RuntimeError):
    """The rendered page would load something from outside the file."""


class ReportWarning(UserWarning):
    """The report was written, but some of it is missing (e.g. a gallery case without its map);
    the page says what and why."""


class PHIError(RuntimeError):
    """The rendered page contains a raw patient id or DICOM PHI; the report was not written."""


def _cell(c: Cell | None) -> Markup:
    """A table cell: value, with ``± sd`` or a small ``[low, high]`` line under it."""
    if c is None or c.value is None:
        return Markup('<span class="na">–</span>')
    v = f"{c.value:.{c.digits}f}" if c.digits else f"{int(round(c.value))}"
    out = _html.escape(v)
    if c.sd is not None:
        out += f' <span class="sd">± {c.sd:.{max(c.digits, 3)}f}</span>'
    if c.low is not None and c.high is not None:
        out += f'<br><span class="ci">[{c.low:.{c.digits}f}, {c.high:.{c.digits}f}]</span>'
    return Markup(out)


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if v != v else f"{v:.{digits}f}"
    return str(v)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["datauri"] = data_uri
    env.filters["cell"] = _cell
    env.filters["num"] = _num
    return env


def render_html(data: ReportData) -> str:
    """The report page for ``data`` (a string of HTML with everything embedded).

    Raises:
        ExternalResourceError: the page would fetch an external resource.
    """
    page = _environment().get_template(TEMPLATE).render(d=data, off_film_note=OFF_FILM_NOTE,
                                                          faithfulness_per_model=FAITHFULNESS_PER_MODEL)
    _self_contained(page, TEMPLATE)
    return page


def _self_contained(page: str, template: str) -> None:
    """Raise :class:`ExternalResourceError` if ``page`` would fetch anything from outside itself."""
    bad = _EXTERNAL.search(_DATA_URI.sub("data:", page))
    if bad:
        raise ExternalResourceError(f"{template}: references an external resource near "
                                    f"{page[bad.start():bad.start() + 60]!r}; embed it as a data URI")


def _check_phi(page: str, forbidden: list[str]) -> None:
    text = _DATA_URI.sub("data:", page)
    if find_in_text(text, forbidden) or find_in_text(_html.unescape(text), forbidden):
        raise PHIError("the rendered report contains a raw patient id, film name, identifying folder name or "
                       "DICOM PHI value of the run (not printed here); it was not written. Check the config "
                       "name and class names for identifying data")


def write_report(run_dir: str | Path, out_path: str | Path, pdf: bool = False,
                 compute_cams: bool = True, compare: str | None = None,
                 annotations: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of a run (and ``<out>.pdf`` with ``pdf=True``).

    Args:
        run_dir: a cross-validation run folder (after ``medtl cv`` / ``--merge``) or a
            training run folder.
        out_path: the HTML file to write (folders are created).
        pdf: also write a PDF beside it (see :func:`export_pdf`).
        compute_cams: compute the gallery's CAM maps with the saved models (needs TensorFlow).
        compare: also map each gallery case with this method (default: the run's
            ``report.compare``), beside the first map, with how far apart their peaks lie.
        annotations: boxes or masks CSV scored in the "Do the maps point at the findings?"
            section (default: the run's ``data.annotations``).

    Returns:
        The HTML file's path.

    Raises:
        FileNotFoundError: not a finished run folder.
        PHIError: the page would contain a raw patient id or DICOM PHI (nothing is written).
        RuntimeError: ``pdf=True`` and no PDF renderer is installed.

    Warns:
        ReportWarning: written, but gallery cases lack their film or map (a moved image, a
            missing fold model); the page notes each case.

    Example:
        >>> write_report("runs/demo/cv-1a2b3c4d5e", "runs/demo/report.html")
        PosixPath('runs/demo/report.html')
    """
    data = collect_report_data(run_dir, compute_cams=compute_cams, compare=compare, annotations=annotations)
    data.model_card = build_model_card(run_dir, data)
    # Left out on purpose with compute_cams=False, so not a problem to warn about.
    problems = [p for p in (c.note.replace(NOT_COMPUTED, "").strip("; ") for c in data.gallery) if p]
    page = render_html(data)
    _check_phi(page, data.forbidden)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    def write_checked(tmp: str) -> None:
        Path(tmp).write_text(page, encoding="utf-8")
        # The written bytes, checked against the run's salted index as `medtl deid-check` would;
        # on a hit the temporary file is removed and the page never reaches `out`.
        hits = deid_check([tmp], run_dir)
        if hits:
            raise PHIError(f"the rendered report matches the run's de-identification index at {len(hits)} "
                           f"place(s) ({hits[0][1]}); it was not written. Check the config name and class "
                           "names for identifying data")

    write_atomic(out, write_checked)
    write_model_card(run_dir, data)  # RUN/model_card.md and .json, checked the same way
    if pdf:
        export_pdf(out, out.with_suffix(".pdf"))
    if problems:
        warnings.warn(ReportWarning(
            f"{out}: {len(problems)} of {len(data.gallery)} gallery case(s) incomplete, e.g. {problems[0]}; "
            "the report notes each one"), stacklevel=2)
    return out


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def export_pdf(html_path: str | Path, pdf_path: str | Path, timeout: float = 120.0) -> Path:
    """Print an HTML report to PDF with WeasyPrint if importable, else headless Chromium.

    Raises:
        RuntimeError: neither renderer is installed (the message says what to install), or
            the renderer failed.

    Example:
        >>> export_pdf("report.html", "report.pdf")
        PosixPath('report.pdf')
    """
    src, dst = Path(html_path).resolve(), Path(pdf_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        import weasyprint  # optional dependency, imported only here
    except ImportError:
        weasyprint = None
    if weasyprint is not None:
        weasyprint.HTML(filename=str(src)).write_pdf(str(dst))
        return dst
    browser = _chromium()
    if browser is None:
        raise RuntimeError("PDF export needs a renderer: pip install weasyprint, or install Chromium "
                           "(Debian/Ubuntu: apt-get install chromium); the HTML report was written")
    with tempfile.TemporaryDirectory(prefix="medtl-pdf-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--no-pdf-header-footer", f"--print-to-pdf={dst.resolve()}", src.as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or not dst.is_file() or dst.stat().st_size == 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{browser}: printing {src} to PDF failed (exit {res.returncode}): {tail[0]}")
    return dst
