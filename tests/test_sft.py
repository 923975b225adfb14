"""sft.py's loss: bf16 runs hand the fused log-prob bf16 hidden states and lm_head (the tensor-core
kernels on CUDA); fp32 runs are the fp32 mean token NLL of the boolean-mask gather, gradients bit for
bit."""

import json

import pytest
import torch

import ppo
import sft
import tasks
from model import Qwen
from tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _chat_data(path, n=8):
    import random
    countdown, rng = tasks.get("countdown"), random.Random(0)
    lines = [{"messages": [{"role": "user", "content": countdown.problem_text(p)},
                           {"role": "assistant", "content": countdown.solution_text(p, rng, "compact")}]}
             for p in countdown.make_problems(n, seed=0)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize("flags,dtype", [([], torch.float32), (["--dtype", "bf16"], torch.bfloat16)])
def test_the_fused_logprob_gets_the_compute_dtype(tiny_ckpt, tmp_path, monkeypatch, flags, dtype):
    seen, fused = [], ppo.token_logprobs

    def spy(h, W, *args, **kw):
        seen.append((h.dtype, W.dtype))
        return fused(h, W, *args, **kw)

    monkeypatch.setattr(ppo, "token_logprobs", spy)
    sft.main(["--model", tiny_ckpt, "--data", _chat_data(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"),
              "--batch-size", "4", "--warmup", "1", "--no-progress", *flags])
    assert seen == [(dtype, dtype)] * 2  # 8 examples, batches of 4: two steps


def test_fp32_loss_is_the_mean_nll_of_the_masked_tokens(tiny_ckpt):
    model = Qwen.from_pretrained(tiny_ckpt)
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    examples = [sft.encode_example(tok, [{"role": "user", "content": f"nums {i} 5 7 target 22"},
                                         {"role": "assistant", "content": "<answer>3*5+7</answer>" * i}])
                for i in (1, 2, 3)]
    ids, mask = sft.pad_batch(examples, tok.pad_id, torch.device("cpu"))
    losses, grads = [], []
    for loss_fn in (lambda: sft.sft_loss(model, ids, mask, torch.float32), lambda: _bool_mask_loss(model, ids, mask)):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert losses[0].dtype == torch.float32
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=0)  # a sum / n, not a mean: same to fp32
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def _bool_mask_loss(model, ids, mask):
    """The fp32 loss as a plain gather: hidden[t] predicts token t+1, the mean over the masked tokens."""
    hidden = model(ids, return_hidden=True)
    on = mask[:, 1:]
    return -ppo.token_logprobs(hidden[:, :-1][on], model.output_weight, ids[:, 1:][on]).mean()
