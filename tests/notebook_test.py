"""notebooks/debug.ipynb runs headless, top to bottom, on tiny simulated logs."""
import os

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "debug.ipynb")


def _outputs_text(cell) -> str:
    texts = []
    for output in cell.get("outputs", []):
        texts.append(output.get("text", ""))
        texts.extend(str(v) for v in output.get("data", {}).values())
    return "\n".join(texts)


def test_debug_notebook_runs_every_component_and_shows_each_output(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    [parameters] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = f"WORK_DIR = {str(tmp_path)!r}\nIMPRESSIONS = 2000\nDAYS = 3\nLOG_GLOB = None"
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": REPO}}).execute()
    text = "\n".join(_outputs_text(c) for c in notebook.cells if c.cell_type == "code")
    assert "lines_read" in text and "examples.train" in text  # ingestion counts
    assert "train examples:" in text  # statistics
    assert "no anomalies" in text
    assert "epoch_loss" not in text and "loss" in text  # the training curve table
    for task in ("click", "purchase"):
        assert task in text
    # Blessing depends on what 2,000 impressions teach; the push must follow it.
    assert "blessed: True" in text or "blessed: False" in text
    served = tmp_path / "interactive" / "serving_model" / "mtrank"
    pushed = served.exists() and bool(os.listdir(served))
    assert pushed == ("blessed: True" in text)
