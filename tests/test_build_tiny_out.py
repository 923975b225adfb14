"""experiments/build_tiny.py writes runs/tiny-<task> unless --replace-assets says to replace the shipped
model in assets/, and its last line says where the model is and how to ship it."""

import importlib.util
import os
import subprocess
import sys
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "build_tiny.py")


def load_build_tiny():
    spec = importlib.util.spec_from_file_location("build_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_model_is_written_only_when_asked():
    build = load_build_tiny()
    for task in ("countdown", "integration"):
        assert build.output_folder(task) == os.path.join(ROOT, "runs", f"tiny-{task}")
        assert build.output_folder(task, replace_assets=True) == os.path.join(ROOT, "assets", f"tiny-{task}")
        assert build.output_folder(task, out="/tmp/t") == "/tmp/t"
    args = SimpleNamespace(out=build.output_folder("countdown"), shipped=build.shipped_folder("countdown"))
    note = build.where_written(args, "wrote")
    assert "unchanged" in note and note.endswith(
        f"to ship it: rm -r {os.path.relpath(args.shipped)} && cp -r {os.path.relpath(args.out)} "
        f"{os.path.relpath(args.shipped)}, then commit")
    args.out = args.shipped
    assert "this is the shipped model" in build.where_written(args, "wrote")


def test_replace_assets_with_another_out_is_one_error_line():
    proc = subprocess.run([sys.executable, SCRIPT, "--replace-assets", "--out", "/tmp/elsewhere"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("--replace-assets writes assets/tiny-<task>: leave out --out")
    help_text = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=300).stdout
    assert "default: runs/tiny-<task>" in help_text and "--replace-assets" in help_text and "cp -r" in help_text
