"""bench/memory_plan.py: exact parameter counts (against a meta-device build of model.Qwen) and one
model's figures against a hand computation."""

import json
import os
import sys
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import memory_plan  # noqa: E402
from model import Qwen  # noqa: E402


def saved_bytes(cfg, autocast_dtype=None) -> int:
    """Bytes of the tensors autograd saves in one forward of a random Qwen(cfg) on [2, 128] tokens (the
    parameters themselves left out), under CPU autocast to autocast_dtype when given."""
    model = Qwen(cfg)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, cfg.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    autocast = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, return_hidden=True)
    return sum(seen.values())


def test_parameter_counts_match_the_model_built_from_each_config():
    for name in memory_plan.MODELS:
        cfg = memory_plan.config(name)
        with torch.device("meta"):
            model = Qwen(cfg)
        assert memory_plan.count_params(cfg) == sum(p.numel() for p in model.parameters()), name


def test_qwen2_5_0_5b_by_hand():
    # 24 layers of q (896x896 + bias), k and v (896x128 + bias each), o (896x896), the MLP (3 x 896x4864)
    # and two norms; the tied embedding 151936 x 896; the final norm
    layer = 896 * 896 + 896 + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    P = 24 * layer + 151936 * 896 + 896  # 494,032,768: "0.49B" on the model card
    assert memory_plan.count_params(memory_plan.config("Qwen2.5-0.5B")) == P
    b = memory_plan.plan(memory_plan.config("Qwen2.5-0.5B"), gpus=8, rollouts=64, prompt_len=256, new_tokens=1024,
                         micro_batch=8, fused=False, grad_ckpt=False)
    assert b["master"] == 4 * P / 8 and b["grads"] == 4 * P / 8 and b["adam"] == 8 * P / 8 and b["weights"] == 2 * P
    kv = 64 * 1280 * 2 * 24 * 2 * 64 * 2  # rows x slots x (k, v) x layers x kv heads x head_dim x bf16
    assert b["kv_cache"] == kv
    assert b["head"] == 12 * (8 * 1024) * 151936  # fp32 logits, log-softmax, gradient: [8 x 1024, vocab] each
    assert b["peak_generate"] == 2 * P + (4 + 4 + 8 + 2) * P / 8 + kv


def test_one_json_line_and_the_table(capsys):
    rows = memory_plan.main(["--markdown"])
    out = capsys.readouterr().out.strip().splitlines()
    line = json.loads(out[-1])
    assert line["bench"] == "memory_plan" and len(line["rows"]) == 16 == len(rows)
    assert out[0].startswith("| model | GPUs |") and len([s for s in out if s.startswith("| Qwen")]) == 16
    seven = {r["gpus"]: r for r in rows if r["model"] == "Qwen2.5-7B"}
    assert not seven[1]["fits"]["fused_ckpt"] and seven[8]["fits"]["fused_ckpt"]  # 7B: 8 GPUs, not 1


def test_activation_bytes_match_what_autograd_saves():
    """One decoder layer's saved tensors under bf16 autocast (2 layers minus 1, the bf16 casts of the
    weights left out) against the plan's per-layer formula, on real widths with a small vocabulary."""
    for name in ("Qwen2.5-0.5B", "Qwen3-0.6B"):
        over = {**memory_plan.MODELS[name], "vocab_size": 512}
        one, two = (memory_plan.QwenConfig(**{**over, "num_hidden_layers": n}) for n in (1, 2))
        with torch.device("meta"):
            casts = 2 * sum(p.numel() for p in Qwen(one).model.layers[0].parameters() if p.dim() == 2)
        measured = saved_bytes(two, torch.bfloat16) - saved_bytes(one, torch.bfloat16) - casts
        planned = memory_plan.layer_act_bytes(one, 2 * 128)
        assert abs(measured / planned - 1) < 0.03, (name, measured, planned)
