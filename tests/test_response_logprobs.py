"""ppo.response_logprobs: no host sync with a host mask (counted), and the same numbers as the
boolean-mask gather it replaces (log-probs, entropy, values and every gradient, bit for bit)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ppo
from model import Qwen, QwenConfig
from ppo import ValueHead, response_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

aten = torch.ops.aten
# ops whose output size or value the host must read from the device: each one waits for the device
SYNCING = {aten.nonzero, aten.masked_select, aten.masked_scatter, aten.masked_scatter_, aten._local_scalar_dense,
           aten.is_nonzero, aten.equal, aten.argwhere, aten._unique2, aten.unique_consecutive, aten.unique_dim}
BOOL_INDEXED = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}  # sync with a bool index


class DeviceSyncCounter(TorchDispatchMode):
    """Counts ops that make the host wait for the device, run on device tensors (forward and backward).

    On the CPU the host and the device are one, so a tensor counts as a host tensor when it derives
    only from the `host` tensors (the host mask): ops on those alone cost no device sync on a GPU."""

    def __init__(self, host):
        super().__init__()
        self.host = {id(t): t for t in host}  # held, so no id is reused
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = [x for x in tree_flatten((args, kwargs or {}))[0] if isinstance(x, torch.Tensor)]
        on_host = bool(inputs) and all(id(x) in self.host for x in inputs)
        bool_index = func.overloadpacket in BOOL_INDEXED and any(
            x.dtype in (torch.bool, torch.uint8) for x in tree_flatten(args[1])[0] if isinstance(x, torch.Tensor))
        if not on_host and (func.overloadpacket in SYNCING or bool_index):
            self.ops.append(str(func))
        out = func(*args, **(kwargs or {}))
        if on_host:
            self.host.update({id(t): t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)})
        return out


def _policy(V=40, seed=0):
    torch.manual_seed(seed)
    model = Qwen(QwenConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.add_(0.1)
    return model


def _batch(B=5, T=11, V=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T)
    mask[0, 3:8] = mask[1, 2:11] = mask[3, 5:6] = mask[4, 1:4] = 1  # row 2: no response token
    mask[4, 0] = 1  # column 0 has no state before it: never a response position
    return ids, mask


def _bool_mask_reference(model, input_ids, response_mask, temperature, return_entropy, value_head,
                         compute_dtype):
    """The gather response_logprobs replaces: boolean-mask indexing and masked_scatter (device syncs)."""
    with ppo.forward_autocast(input_ids.device, compute_dtype):
        hidden = model(input_ids, return_hidden=True)
    on = response_mask[:, 1:] > 0
    h = hidden[:, :-1][on]
    out = ppo.token_logprobs(h.to(compute_dtype), model.output_weight.to(compute_dtype), input_ids[:, 1:][on],
                             temperature, return_entropy)
    logp, ent = out if return_entropy else (out, None)

    def to_bt(x):
        return torch.nn.functional.pad(torch.zeros(on.shape, dtype=x.dtype).masked_scatter(on, x), (1, 0))

    values = to_bt(value_head(h)) if value_head is not None else None
    return to_bt(logp), (to_bt(ent) if ent is not None else None), values


def _run(fn, model, head, ids, mask, compute_dtype):
    """Forward + backward of a loss touching every output -> (outputs, parameter gradients)."""
    model.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    logp, ent, values = fn(model, ids, mask, 0.8, True, head, compute_dtype)
    w = torch.linspace(-1, 1, ids.numel()).view(ids.shape)
    ((logp * w).sum() + (ent * w.flip(1)).sum() + (values * w).sum()).backward()
    grads = [p.grad.clone() for p in (*model.parameters(), *head.parameters())]
    return [logp.detach(), ent.detach(), values.detach()], grads


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_same_numbers_as_the_bool_mask_gather(compute_dtype):
    model, head = _policy(), ValueHead(32)
    torch.nn.init.normal_(head.proj.weight, 0, 0.5)
    ids, mask = _batch()
    got, got_grads = _run(response_logprobs, model, head, ids, mask, compute_dtype)
    want, want_grads = _run(_bool_mask_reference, model, head, ids, mask, compute_dtype)
    for a, b in zip(got + got_grads, want + want_grads):
        assert a.dtype == b.dtype and torch.equal(a, b)  # the same values gathered and scattered: bit for bit
    logp = got[0]
    assert (logp[mask == 0] == 0).all() and (logp[:, 0] == 0).all() and (logp[:, 1:][mask[:, 1:] > 0] < 0).all()


def test_a_host_mask_costs_no_device_sync():
    model, head = _policy(), ValueHead(32)
    ids, mask = _batch()
    with DeviceSyncCounter(host=[mask]) as counter:
        logp, ent, values = response_logprobs(model, ids, mask, 0.8, True, head)
        (logp.sum() + ent.sum() + values.sum()).backward()
    assert counter.ops == []


def test_the_counter_sees_the_syncs_of_a_bool_mask_gather():
    """The counter is not vacuous: the replaced gather syncs in its forward and its backward."""
    model, head = _policy(), ValueHead(32)
    ids, mask = _batch()
    with DeviceSyncCounter(host=[mask]) as counter:
        logp, ent, values = _bool_mask_reference(model, ids, mask, 0.8, True, head, torch.float32)
        forward_syncs = len(counter.ops)
        (logp.sum() + ent.sum() + values.sum()).backward()
    assert forward_syncs >= 4, counter.ops  # the two gathers, and the scatter of each of the three outputs
    assert len(counter.ops) > forward_syncs, counter.ops
