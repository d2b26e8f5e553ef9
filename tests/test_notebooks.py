"""The notebooks execute top to bottom on the embedded data (nbclient, no network)."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def test_notebooks_exist():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"quickstart.ipynb", "neurons_and_surrogates.ipynb",
          "energy_and_analysis.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path):
  nb = nbformat.read(path, as_version=4)
  assert "cfsnn_jax" in nb.cells[1].source  # thin: an install cell, then imports the package
  env_cwd = REPO  # configs/ is imported from the repository root
  client = NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": env_cwd}})
  client.execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
