"""Every command in README.md and docs/*.md runs as written, in its ``:tiny`` form.

``documented_commands()`` extracts every ``python -m ...`` / ``pip ...`` / ``tfds ...``
command from the fenced code blocks and inline code of the docs (continuation lines joined,
trailing comments dropped, ``[optional]`` arguments kept without their brackets).
``tiny_form`` turns one into a command that runs offline in seconds: training and energy
commands get the config's ``:tiny`` branch (fixture data, so ``--config.data_dir`` is dropped)
and a scratch workdir; benchmark commands get ``--tiny --steps=1`` (the device check its
shrunk cases, the plan one ``:tiny`` config); ``experiments.reproduce`` runs every row's
``:tiny`` form; launcher commands keep their ``--dry_run``. Commands that cannot run offline
are listed in ``NOT_RUN`` with the reason (README.md says the same). Identical tiny forms run
once.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(
    os.path.join(REPO, "docs", "*.md")) if not p.endswith("DECISIONS.md"))

NOT_RUN = {
    "pip install": "installs packages from PyPI (network); the test suite runs in an installed "
                   "tree",
    "python -m pytest": "the test suite itself",
    "tfds build": "downloads the dataset (network)",
}
if importlib.util.find_spec("spikingjelly") is None or importlib.util.find_spec("torch") is None:
  NOT_RUN["python -m benchmarks.peers"] = ("needs the optional peers extra (torch CPU + "
                                           "spikingjelly), not part of the test extra")
# ``configs/X.py`` in the docs is a template: it is run with configs/default.py.
_START = re.compile(r"^(python -m |pip install|tfds build)")


def _commands_in(text: str) -> list[str]:
  out = []
  blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
  inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
  lines = []
  for block in blocks:
    lines += block.replace("\\\n", " ").splitlines()
  lines += inline
  for line in lines:
    line = re.sub(r"\s+#.*$", "", line.strip())
    for part in line.split("&&"):
      part = part.strip()
      if _START.match(part):
        out.append(re.sub(r"\[(--[^\]]+)\]", r"\1", " ".join(part.split())))
  return out


def documented_commands() -> list[tuple[str, str]]:
  cmds = []
  for doc in DOCS:
    with open(os.path.join(REPO, doc)) as f:
      cmds += [(doc, c) for c in _commands_in(f.read())]
  return cmds


def _not_run_reason(cmd: str) -> str | None:
  for prefix, reason in NOT_RUN.items():
    if cmd.startswith(prefix):
      return reason
  return None


def tiny_form(cmd: str, scratch: str) -> list[str]:
  argv = shlex.split(cmd.replace("configs/X.py", "configs/default.py"))  # the docs' template
  assert argv[:2] == ["python", "-m"], cmd
  module, args = argv[2], argv[3:]
  if module in ("cfsnn_jax.main", "cfsnn_jax.analysis.energy"):
    out, has_config = [], False
    for a in args:
      if a.startswith("--config="):
        value = a.split("=", 1)[1]
        out.append(a if ":" in value else f"{a}:tiny")
        has_config = True
      elif a.startswith("--workdir="):
        continue
      elif a.startswith("--config.data_dir="):
        continue  # the :tiny branch reads its fixture
      else:
        out.append(a)
    if not has_config:
      out.insert(0, "--config=configs/default.py:tiny")
    config = [a for a in out if a.startswith("--config=")][0].split("=", 1)[1]
    workdir = os.path.join(scratch, re.sub(r"\W", "_", config))
    overrides = [a for a in out if a.startswith("--config.")]
    if module == "cfsnn_jax.main" and overrides:  # its own run; the energy reads the plain one
      workdir += "_" + re.sub(r"\W", "_", "_".join(overrides))
    return [module, *out, f"--workdir={workdir}"]
  if module == "benchmarks.run" and "--device_check" in args:  # the check's cases shrunk
    return [module, "--device_check", "--tiny", "--steps=1", "--warmup=0",
            "--out=SCRATCH/device_check.json"]
  if module == "benchmarks.run":
    return [module, "--tiny", "--steps=1"]  # --tiny picks its own few cases
  if module == "benchmarks.plan":  # one :tiny config
    return [module, "--tiny"]
  if module == "experiments.reproduce":  # listing as written; running / checking: every row
    return [module, *args] if not args else [module, "--tiny", "--workdir_root=SCRATCH/reproduce"]
  if module == "benchmarks.peers":  # the same models, a few channels, one timed step each
    models = [a for a in args if a.startswith("--models=")]
    return [module, "--tiny", "--steps=1", "--batch=4", *models]  # 4 simulated devices
  if module == "benchmarks.bf16_paths":  # tiny shapes
    return [module, "--n=2", "--hw=6", "--c=8", "--reps=1"]
  if module == "experiments.launch":
    assert "--dry_run" in args, cmd
    return [module, *args]
  raise AssertionError(f"no tiny form for documented command {cmd!r}")


def test_documented_commands_are_found_and_classified():
  cmds = documented_commands()
  assert len(cmds) >= 10
  modules = {shlex.split(c)[2] for _, c in cmds if not _not_run_reason(c)}
  assert {"cfsnn_jax.main", "cfsnn_jax.analysis.energy", "experiments.launch",
          "benchmarks.run"} <= modules
  readme = open(os.path.join(REPO, "README.md")).read()
  assert "tests/test_documented_commands.py" in readme  # README says which do not run


def _tiny_forms() -> list[tuple[str, ...]]:
  forms = []
  for _, cmd in documented_commands():
    if _not_run_reason(cmd) is None:
      form = tuple(tiny_form(cmd, "SCRATCH"))
      if form not in forms:
        forms.append(form)
  # training before the energy estimate of the same workdir (a trained run, as documented)
  return sorted(forms, key=lambda f: f[0] != "cfsnn_jax.main")


@pytest.mark.parametrize("form", _tiny_forms(), ids=lambda f: " ".join(f)[:80])
def test_documented_command_runs_in_its_tiny_form(form, tmp_path_factory):
  scratch = str(tmp_path_factory.getbasetemp() / "documented")
  argv = [a.replace("SCRATCH", scratch) for a in form]
  env = dict(os.environ, PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True,
                     timeout=600, env=env)
  assert r.returncode == 0, f"{' '.join(argv)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
  assert "Traceback" not in r.stderr
