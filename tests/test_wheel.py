"""The built wheel works outside the repository: configs ship inside it, the main job's
``:tiny`` default and the energy CLI run from an unrelated directory in a fresh venv.

Offline and fast: ``pip wheel --no-deps --no-build-isolation`` on a copy of the sources (the
checkout stays clean), a ``--system-site-packages`` venv and ``pip install --no-deps``: the
dependencies come from the environment the suite runs in. Where that is itself a virtual
environment (the README's ``python3 -m venv v && pip install -e ".[test]"``), a new venv's
system site is the base interpreter's, so the suite's own site-packages are added to the
wheel's venv by a ``.pth`` file (plain paths: their ``.pth`` hooks, e.g. an editable
cfsnn_jax, are not run). The venv's copy must be the one imported, never the checkout or an
editable install. Wheel size and install time are printed (``-s``).
"""

import glob
import os
import shutil
import site
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL_MAX_BYTES = 1_000_000  # code + configs + the split index: 0.17 MB today


def _run(cmd, cwd, env, timeout=600):
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  try:
    import wheel  # noqa: F401  (setuptools < 70.1 needs it for bdist_wheel)
  except ImportError:
    import setuptools
    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1):
      pytest.fail("building the wheel offline needs the `wheel` package (in the test extra)")
  root = tmp_path_factory.mktemp("wheel")
  src = root / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), src / name)
  shutil.copytree(os.path.join(REPO, "cfsnn_jax"), src / "cfsnn_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env["PYTHONNOUSERSITE"] = "1"
  t0 = time.perf_counter()
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(root / "dist"), str(src)], cwd=root, env=env)
  build_s = time.perf_counter() - t0
  (whl,) = glob.glob(str(root / "dist" / "cfsnn_jax-*.whl"))
  venv = root / "venv"
  _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=root, env=env)
  python = str(venv / "bin" / "python")
  if sys.prefix != sys.base_prefix:  # the suite runs in a venv: lend the wheel its packages
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=root, env=env).strip()
    with open(os.path.join(purelib, "_suite_site_packages.pth"), "w") as f:
      f.write("".join(p + "\n" for p in site.getsitepackages() if os.path.isdir(p)))
  t0 = time.perf_counter()
  _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", whl], cwd=root,
       env=env)
  install_s = time.perf_counter() - t0
  size = os.path.getsize(whl)
  print(f"\nwheel {os.path.basename(whl)}: {size / 1e3:.0f} kB, build {build_s:.1f} s, "
        f"install {install_s:.1f} s")
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  return dict(python=python, venv=str(venv), env=env, cwd=str(elsewhere), size=size)


def test_wheel_is_small_and_imported_from_the_venv(installed):
  assert installed["size"] < WHEEL_MAX_BYTES
  out = _run([installed["python"], "-c",
              "import cfsnn_jax, cfsnn_jax.configs as c, os; print(cfsnn_jax.__file__); "
              "print(sorted(f for f in os.listdir(os.path.dirname(c.__file__)) "
              "if f.endswith('.py')))"], cwd=installed["cwd"], env=installed["env"])
  path, configs = out.strip().splitlines()
  assert path.startswith(installed["venv"]), path  # not the checkout, not an editable install
  assert "'default.py'" in configs and "'cifar100.py'" in configs and "'dsatgo_cifar10.py'" \
      in configs


def test_wheel_runs_main_tiny_and_energy_cli_elsewhere(installed):
  python, cwd, env = installed["python"], installed["cwd"], installed["env"]
  default = _run([python, "-c", "import os, cfsnn_jax.configs as c; "
                  "print(os.path.join(os.path.dirname(c.__file__), 'default.py'))"],
                 cwd=cwd, env=env).strip()
  workdir = os.path.join(cwd, "run")
  out = _run([python, "-m", "cfsnn_jax.main", f"--config={default}:tiny",
              f"--workdir={workdir}", "--config.progress_bar=False"], cwd=cwd, env=env)
  assert "final: test_accuracy=" in out
  assert os.path.exists(os.path.join(workdir, "summary.json"))
  out = _run([python, "-m", "cfsnn_jax.analysis.energy", f"--config={default}:tiny",
              f"--workdir={workdir}", "--num_batches=1"], cwd=cwd, env=env)
  assert "mJ" in out
  assert os.path.exists(os.path.join(workdir, "energy.json"))
  assert not os.path.exists(os.path.join(cwd, "configs"))  # nothing leaned on a local copy
