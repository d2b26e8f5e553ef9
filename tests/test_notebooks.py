"""The notebooks run from their own folder on the embedded data (nbclient, no network) and
import only the installed package; every plotting cell shows an image; the install cell says
plainly what to set instead of failing silently."""

import glob
import importlib.util
import os
import re
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
PLOTTING = re.compile(r"plt\.|display\(Image|\.savefig|_figure\(")


def test_notebooks_exist():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"quickstart.ipynb", "neurons_and_surrogates.ipynb",
          "energy_and_analysis.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_imports_only_the_package(path):
  nb = nbformat.read(path, as_version=4)
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert "os.chdir" not in code and "%cd" not in code
  assert not re.search(r"^\s*(from|import)\s+configs\b", code, re.M)  # not from the cwd
  install = nb.cells[1].source
  assert install.lstrip().startswith("#") and 'CFSNN_JAX_SOURCE = ""' in install


def _run_install_cell(source, monkeypatch, found):
  calls = []
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: found)
  monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(cmd))
  code = "\n".join(l for l in source.splitlines() if not l.startswith("%"))
  exec(compile(code, "install-cell", "exec"), {})
  return calls


def test_install_cell_fails_loudly_and_installs_the_source(monkeypatch):
  source = nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source
  assert _run_install_cell(source, monkeypatch, found=object()) == []  # installed: no-op
  with pytest.raises(RuntimeError, match="set CFSNN_JAX_SOURCE"):
    _run_install_cell(source, monkeypatch, found=None)
  url = "git+https://example.org/me/cfsnn_jax.git"
  calls = _run_install_cell(source.replace('CFSNN_JAX_SOURCE = ""',
                                           f'CFSNN_JAX_SOURCE = "{url}"'), monkeypatch, None)
  assert len(calls) == 1 and calls[0][-1] == url and calls[0][1:4] == ["-m", "pip", "install"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes_from_its_folder_with_images(path, monkeypatch):
  # The kernel imports the package under test (as an install would), never a cwd module.
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.delenv("MPLBACKEND", raising=False)
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(path)}})
  client.execute()
  code_cells = [c for c in nb.cells if c.cell_type == "code"]
  errors = [o for c in code_cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
  plotting = [c for c in code_cells if PLOTTING.search(c.source)]
  assert plotting, "every notebook draws something"
  for cell in plotting:
    images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"plotting cell shows no image:\n{cell.source[:300]}"
