"""notebooks/quickstart.ipynb runs top to bottom and produces what it promises."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    # Outputs (base64 images, run folder names) would bloat the repository and every diff.
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c.get("outputs") and c.get("execution_count") is None for c in code)


def test_notebook_uses_only_the_public_api():
    # The notebook is what users copy: every medtl name it uses must be one medtl promises to
    # keep (medtl.__all__), never a sub-module that may move.
    import medtl

    code = "\n".join("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"]
                     if c["cell_type"] == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    tree = ast.parse(code)
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            wrong += [a.name for a in node.names if a.name.startswith("medtl.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "medtl":
            wrong.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "medtl":
            if node.attr not in medtl.__all__:
                wrong.append(f"medtl.{node.attr}")
    assert not wrong, f"the notebook uses names outside medtl.__all__: {sorted(set(wrong))}"
    assert "medtl.cv(" in code and "medtl.report(" in code and "medtl.init(" in code


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    # The kernel is ipykernel's "python3", which jupyter_client starts with this interpreter
    # (this venv), in tmp_path: everything the notebook writes stays there.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell on any error

    nbformat.write(nb, tmp_path / "quickstart.executed.ipynb")  # for a look when a check fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # the batch, the history, the ROC curve, the heat maps
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Cross-validation" in text and "roc_auc" in text

    run = tmp_path / "runs" / "quickstart-cv"
    report = run / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000
    page = report.read_text(encoding="utf-8")
    assert "<img" in page and 'alt="occlusion map"' in page  # the starter config's second map
    assert (tmp_path / "quickstart.yaml").is_file()
    assert (run / "oof_predictions.csv").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["complete"] and metrics["folds"] == 2
    assert list(tmp_path.glob("runs/quickstart_data/*/model.keras"))
    for written in ("runs", "quickstart_data", "quickstart.yaml", ".medtl-cache"):
        assert not (NOTEBOOK.parent / written).exists()  # nothing lands beside the notebook
