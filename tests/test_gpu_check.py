"""bench/gpu_check.py on a machine without CUDA (this one): one line and exit code 2. Then the parts
of it that need no GPU: the JSON lines, a failing check not stopping the others, the summary and
its exit code, greedy parity with near-ties, the SDPA kernel names, the phase hook into train.py,
the model placement verdict, the noise check's figures, the metrics comparison of the nccl check."""

import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu_check.py")
sys.path.append(os.path.join(REPO, "bench"))  # appended: the project's modules come first

import gpu_check  # noqa: E402


def test_without_cuda_one_line_and_exit_code_2():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and proc.stderr == ""
    msg = json.loads(lines[0])
    assert msg["check"] == "cuda" and msg["ok"] is False and "CUDA is not available" in msg["error"]


def test_list_names_every_check_once():
    names = [n for n, _ in gpu_check.CHECKS]
    assert len(names) == len(set(names))
    assert {"env", "rl_step_bf16", "rl_step_fp32", "logprob_d896_bf16", "logprob_d4096_fp32", "attention_backends",
            "generate_fp32_vs_hf", "generate_bf16_b1", "generate_bf16_b64", "generate_compile_shapes", "host_syncs",
            "memory_plan", "noise_share", "nccl"} <= set(names)
    assert names.index("memory_plan") < min(names.index(n) for n in names if n.startswith(("generate", "noise")))
    assert [n for n, _ in gpu_check.select("logprob_d896,nccl")] == ["logprob_d896_bf16", "logprob_d896_fp32", "nccl"]
    assert gpu_check.select("") == gpu_check.CHECKS


def test_a_line_is_one_json_object_check_first():
    text = gpu_check.line({"seconds": 1.23456789, "check": "x", "err": float("nan"), "ok": True, "parity": False,
                           "t": torch.tensor(2.5), "v": torch.tensor([1, 2]), "dev": torch.device("cpu"),
                           "nested": {"inf": float("inf"), "tiny": 1.234567e-9}})
    assert "\n" not in text
    d = json.loads(text)
    assert list(d)[:3] == ["check", "ok", "parity"]
    assert d["seconds"] == 1.235 and d["err"] is None and d["t"] == 2.5 and d["v"] == [1, 2] and d["dev"] == "cpu"
    assert d["nested"] == {"inf": None, "tiny": 1.235e-9}


def test_a_failing_check_is_a_line_and_the_next_still_runs(capsys):
    out = io.StringIO()

    def noisy():
        print("the code under test talks")  # must not reach the JSON stream
        return {"ok": True, "parity": False, "figure": 3}

    def broken():
        raise RuntimeError("kernel launch failed\nsecond line\n\nthird\nfourth")

    results = [gpu_check.run_check("a", noisy, out), gpu_check.run_check("b", broken, out),
               gpu_check.run_check("c", noisy, out)]
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["check"] for x in lines] == ["a", "b", "c"]
    assert lines[0]["figure"] == 3 and "seconds" in lines[0]
    assert lines[1]["ok"] is False and lines[1]["parity"] is True
    assert lines[1]["error"] == "RuntimeError: kernel launch failed | second line | third"
    assert "the code under test talks" in capsys.readouterr().err
    summary, code = gpu_check.summarize(results, 1.0)
    assert code == 1 and summary["errors"] == ["b"] and summary["parity_failed"] == ["b"]


@pytest.mark.parametrize("results,code,missed", [
    ([{"check": "a", "ok": True, "parity": True}, {"check": "b", "ok": True, "parity": False}], 0, []),
    ([{"check": "a", "ok": False, "parity": True, "expect": {"fast": False}}], 1, ["a.fast"]),
    # a figure outside its expected range is reported, not a failure
    ([{"check": "a", "ok": True, "parity": True}, {"check": "b", "ok": False, "parity": False,
                                                   "expect": {"fast": False, "small": True}}], 0, ["b.fast"]),
    ([{"check": "n", "ok": True, "parity": True, "skipped": "needs >= 2 GPUs, found 1"}], 0, []),
])
def test_summary_and_exit_code(results, code, missed):
    summary, got = gpu_check.summarize(results, 12.34)
    assert got == code and summary["ok"] is (code == 0) and summary["expectations_missed"] == missed
    assert summary["check"] == "summary" and summary["checks"] == len(results) and summary["seconds"] == 12.3
    assert summary["skipped"] == [r["check"] for r in results if r.get("skipped")]


def test_greedy_parity_allows_divergence_only_at_near_ties():
    V = 10

    def referee(gap):  # logits where tokens 3 and 4 are `gap` apart and everything else is far below
        def next_logits(ids):
            z = torch.full((V,), -10.0)
            z[3], z[4] = 1.0, 1.0 - gap
            return z
        return next_logits

    prompts = [[1, 2], [5]]
    a = [[3, 3, 3], [7, 3, 6]]
    same = gpu_check.greedy_parity(prompts, a, [list(r) for r in a], referee(0.5), tol=1e-3)
    assert same["ok"] and same["identical"] == 2 and same["first_divergence"] is None
    b = [[3, 3, 3], [7, 4, 6]]  # row 1 parts at step 1: 3 vs 4
    assert gpu_check.greedy_parity(prompts, a, b, referee(1e-4), tol=1e-3)["ok"]
    far = gpu_check.greedy_parity(prompts, a, b, referee(0.5), tol=1e-3)
    assert not far["ok"] and far["first_divergence"] == 1 and far["tie_margin"] == pytest.approx(0.5)
    short = gpu_check.greedy_parity(prompts, a, [[3, 3], [7, 3, 6]], referee(0.5), tol=1e-3)
    assert not short["ok"] and short["length_mismatch"] == 1


def test_compile_shapes_fall_in_one_bucket():
    shapes = gpu_check.compile_shapes()
    assert len(shapes) == 10 and len({(len(ls), max(ls), new) for ls, new in shapes}) == 10
    buckets = {(gpu_check.pow2(len(ls)), gpu_check.pow2(max(ls) + new, 64)) for ls, new in shapes}
    assert buckets == {(64, 256)}
    assert [gpu_check.pow2(x) for x in (1, 2, 3, 33, 64, 65)] == [1, 2, 4, 64, 64, 128]
    assert gpu_check.pow2(10, 64) == 64


def test_sdpa_kernel_names():
    b = gpu_check.sdpa_backend
    assert b("aten::_scaled_dot_product_flash_attention") == "flash"
    assert b("aten::_scaled_dot_product_flash_attention_backward") == "flash"
    assert b("aten::_scaled_dot_product_flash_attention_for_cpu") == "flash_cpu"
    assert b("aten::_scaled_dot_product_efficient_attention") == "efficient"
    assert b("aten::_scaled_dot_product_cudnn_attention_backward") == "cudnn"
    assert b("aten::_scaled_dot_product_attention_math") == "math"
    assert b("aten::scaled_dot_product_attention") is None and b("aten::mm") is None


def test_attention_backends_tags_every_phase(tiny_ckpt):
    from model import Qwen
    model = Qwen.from_pretrained(tiny_ckpt).train()
    found = gpu_check.attention_backends(model)
    assert set(found) == {"training", "training_backward", "prefill_equal", "decode_equal", "prefill_ragged",
                          "decode_ragged"}
    assert all(b and set(b) <= set(gpu_check.SDPA_OPS.values()) for b in found.values())
    assert "forward" not in vars(model)  # the tagging wrapper is gone


def test_rl_run_watches_each_phase_through_train_hook(tiny_ckpt):
    """gpu_check's seam into train.py is train_rl's hook, not patched names: a real step's timed phases
    start and end once each, in order, with the run's models; generate carries the rollout prompts."""
    import train
    seen = []
    flags = ["--model", tiny_ckpt, "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
             "--max-new-tokens", "6", "--judge-max-new-tokens", "6", "--eval-interval", "0", "--no-progress"]
    models, lines = gpu_check.rl_run(flags, lambda *a: seen.append(a))
    assert [(phase, when) for phase, when, _, _ in seen] == [
        (phase, when) for phase in ("generate", "verify", "judge", "update") for when in ("start", "end")]
    assert isinstance(models, train.Models) and all(m is models for _, _, m, _ in seen)
    prompts = seen[0][3]  # the 2 problems' chat prompts, token ids
    assert len(prompts) == 2 and all(isinstance(t, int) for p in prompts for t in p)
    assert [line["step"] for line in lines] == [1]
    assert gpu_check.misplaced({"after_step": gpu_check.model_devices(models)}, torch.device("cpu")) == []


def test_noise_check_reports_the_share_and_parity(tiny_ckpt, monkeypatch):
    """check_noise on the CPU with the tiny model standing in for the 0.5B one, the fused noise left eager
    (no compile here): one parity line with bench/noise.py's figures and the expectations."""
    import sample
    from model import Qwen
    monkeypatch.setattr(gpu_check, "qwen05b_folder", lambda: tiny_ckpt)
    monkeypatch.setattr(gpu_check, "load_ours", lambda path, dtype: Qwen.from_pretrained(path))
    monkeypatch.setitem(sample._FUSED_UNIFORM, "fn", sample.hashed_uniform)
    out = gpu_check.check_noise()
    assert out["ok"] is True and out["parity"] is True and out["identical"] is True
    assert out["rows"] == 64 and out["context"] == 256 and out["device"] == "cpu"
    assert 0 < out["share_fused"] < 1 and out["decode_step_ms"] > 0 and out["noise_fused_ms"] > 0
    assert set(out["expect"]) == {"fused_compiled", "fused_faster_than_eager", "fused_share_at_most_5pct"}
    assert out["expect"]["fused_compiled"] is False  # left eager above
    json.loads(gpu_check.line({"check": "noise_share", **out}))


def test_placement_verdict_names_the_phase_and_model():
    on = torch.nn.Linear(2, 2)
    off = torch.nn.Linear(2, 2, device="meta")
    judge = SimpleNamespace(model=on)
    models = SimpleNamespace(policy=on, sampler=on, reference=off, judge=judge)
    placements = {"update": gpu_check.model_devices(models)}
    assert placements["update"] == {"policy": ["cpu"], "sampler": ["cpu"], "reference": ["meta"], "judge": ["cpu"]}
    assert gpu_check.misplaced(placements, torch.device("cpu")) == ["update/reference: meta"]
    no_ref = SimpleNamespace(policy=on, sampler=on, reference=None, judge=None)
    assert gpu_check.misplaced({"load": gpu_check.model_devices(no_ref)}, torch.device("cpu")) == []


def test_metrics_comparison():
    a = [{"step": 1, "reward_mean": 0.5, "loss": 0.1, "judge_tp": 3}]
    assert gpu_check.compare_metrics(a, [{"step": 1, "reward_mean": 0.5, "loss": 0.10001, "judge_tp": 3}]) == []
    diffs = gpu_check.compare_metrics(a, [{"step": 1, "reward_mean": 0.5, "loss": 0.2, "judge_tp": 4}])
    assert diffs == ["step 1: judge_tp 3 != 4", "step 1: loss 0.1 != 0.2"]
    assert gpu_check.compare_metrics(a, a + a) == ["1 lines != 2 lines"]
