"""hub.py: hub ids resolved offline from a cache laid out as huggingface_hub lays it out, through
eval.py and train.py; an unknown id, a repo without safetensors, a missing package: one line each."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import hub
from model import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(hf_home, repo_id, folder, revision="main", files=None):
    """HF_HOME/hub/models--org--name/{blobs, refs/<revision>, snapshots/<commit>/<file>}, as
    huggingface_hub writes a download (snapshot files are links to content-addressed blobs)."""
    repo = os.path.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", COMMIT)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    with open(os.path.join(repo, "refs", revision), "w") as f:
        f.write(COMMIT)
    for name in files or os.listdir(folder):
        blob = os.path.join(repo, "blobs", f"blob-{name}")
        shutil.copy(os.path.join(folder, name), blob)
        os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))
    return snapshot


@pytest.fixture()
def offline_cache(tiny_ckpt, tmp_path, monkeypatch):
    home = str(tmp_path / "hf")
    snapshot = lay_out_cache(home, "tiny-org/tiny-qwen", tiny_ckpt)
    lay_out_cache(home, "tiny-org/pickles-only", tiny_ckpt, files=["config.json", "tokenizer.json"])
    env = {**os.environ, "HF_HOME": home, "HF_HUB_OFFLINE": "1"}
    return env, snapshot


def in_subprocess(env, code):
    """huggingface_hub reads HF_HOME when imported: resolve in a fresh process with the test's env."""
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); {code}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_hub_ids_resolve_from_the_offline_cache(offline_cache):
    env, snapshot = offline_cache
    for name in ("tiny-org/tiny-qwen", "tiny-org/tiny-qwen@main"):
        r = in_subprocess(env, f"import hub; print(hub.resolve_model({name!r}))")
        assert r.returncode == 0, r.stderr
        assert os.path.realpath(r.stdout.strip()) == os.path.realpath(snapshot)


def test_unknown_ids_and_repos_without_safetensors_are_one_line(offline_cache):
    env, _ = offline_cache
    code = ("import hub\nfrom model import CheckpointError\ntry: hub.resolve_model(sys.argv[1])\n"
            "except CheckpointError as e: print(e)")
    for name, message in (("tiny-org/nope", "not in the offline cache"),
                          ("tiny-org/tiny-qwen@v9", "tiny-org/tiny-qwen@v9"),
                          ("tiny-org/pickles-only", "no .safetensors")):
        r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r})\n{code}", name],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert r.returncode == 0 and message in r.stdout and len(r.stdout.strip().splitlines()) == 1, \
            (name, r.stdout, r.stderr)


def test_eval_and_train_take_a_hub_id(offline_cache, tmp_path):
    env, snapshot = offline_cache
    env = {**env, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--model", "tiny-org/tiny-qwen", "--n", "2",
                        "--max-new-tokens", "8", "--judge-samples", "0", "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tiny-qwen" in r.stdout and json.loads(out.read_text())["results"][0]["problems"] == 2
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--model", "tiny-org/tiny-qwen@main",
                        "--steps", "1", "--prompts-per-step", "1", "--group-size", "2", "--max-new-tokens", "8",
                        "--judge-max-new-tokens", "8", "--eval-interval", "0", "--out", str(run), "--no-progress"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.realpath(json.loads((run / "config.json").read_text())["model"]) == os.path.realpath(snapshot)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--model", "tiny-org/tiny-qwen", "--prompt",
                        "nums 3 5 7", "--max-new-tokens", "4"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--model", "tiny-org/unknown", "--n", "1"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "tiny-org/unknown" in r.stderr.strip().splitlines()[-1]


def test_local_folders_win_and_a_missing_package_is_one_line(tiny_ckpt, monkeypatch, tmp_path):
    os.makedirs(tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert hub.resolve_model("org/name") == "org/name"  # an existing folder is never taken for a hub id
    assert hub.resolve_model(tiny_ckpt) == tiny_ckpt and hub.resolve_model("live") == "live"
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(CheckpointError, match=r"pip install -e \"\.\[hub\]\""):
        hub.resolve_model("org/other")
