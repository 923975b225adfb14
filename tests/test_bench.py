"""bench/: no script shadows a module of the project (a script's folder comes first on sys.path, so
`PYTHONPATH=. python bench/X.py` would import bench's file instead), and every script starts -- its
--help -- from another folder with PYTHONPATH set to the repository, a common development setup."""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "bench", "*.py")))


def project_modules() -> set:
    """Top-level modules and packages of the project: the .py files and package folders at the root,
    and what pyproject.toml installs."""
    names = {os.path.splitext(f)[0] for f in os.listdir(REPO) if f.endswith(".py")}
    names |= {d for d in os.listdir(REPO) if os.path.isfile(os.path.join(REPO, d, "__init__.py"))}
    with open(os.path.join(REPO, "pyproject.toml")) as f:  # (tomllib is Python 3.11+; the project runs on 3.10)
        pyproject = f.read()
    for key in ("py-modules", "packages"):  # one-line TOML arrays of strings, as Python reads lists
        names |= set(ast.literal_eval(re.search(rf"^{key} = (\[.*\])", pyproject, re.M).group(1)))
    return names


def test_no_bench_script_shadows_a_project_or_standard_module():
    stems = {os.path.splitext(os.path.basename(s))[0] for s in SCRIPTS}
    assert {"sample", "model", "memory", "tasks"} <= project_modules()  # the listing sees the project
    assert not stems & project_modules()
    assert not stems & set(sys.stdlib_module_names)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: os.path.basename(s))
def test_each_bench_script_starts_with_pythonpath_set_from_another_folder(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:")
