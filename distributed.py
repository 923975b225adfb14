"""distributed.py — where the work runs: the device, the compute dtype, and under torchrun the ranks.

One process (python train.py): every function here is a no-op or the identity, rank 0 of world 1.
Under torchrun (WORLD_SIZE > 1) the policy is sharded by PyTorch's FSDP2 (`fully_shard` per decoder
layer + the root; nccl on CUDA, gloo on the CPU): each rank rolls out, judges and trains on its
share of a step's problems, and rank 0 gathers metrics and writes files.
"""

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


def pick_device(name: str = "auto") -> torch.device:
    """auto -> cuda:0 when CUDA is available, else cpu. CUDA devices always carry an index, so that
    `model.device == device` comparisons hold (torch.device("cuda") != torch.device("cuda:0"))."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 compute over fp32 master weights (small Adam updates do not vanish in bf16 rounding) with
    --dtype bf16, or auto on CUDA; fp32 otherwise."""
    mixed = dtype == "bf16" or (dtype == "auto" and device.type == "cuda")
    return torch.bfloat16 if mixed else torch.float32


def init_distributed(device) -> tuple[int, int, torch.device]:
    """-> (rank, world size, this rank's device). Under torchrun joins the process group: nccl with
    one GPU per rank (cuda:LOCAL_RANK), gloo on the CPU. Alone: (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":  # binding the device up front lets nccl set up its communicator eagerly
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        dist.barrier()  # every rank has checked its flags (--out is fresh) before rank 0 writes config.json
    return dist.get_rank(), dist.get_world_size(), device


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def close():
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(model, device, mixed: bool):
    """FSDP2 over all ranks: each decoder layer, then the root (embeddings, final norm, lm_head), so a
    layer's full weights exist only during its forward and backward. Mixed precision: fp32 shards (the
    master weights; Adam's states follow them), gathered as bf16 for compute, gradients reduced in fp32."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(torch.bfloat16, reduce_dtype=torch.float32) if mixed else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


@contextmanager
def resident(models, device, generate=False):
    """The models ready for one pass on `device`: a --ref-placement cpu model is moved in (and back out
    after); with generate=True an FSDP model's full weights are gathered on every rank once for the
    whole block (and freed after), since ranks stop decoding at different steps and so no collective
    may run inside `generate`. Costs one all-gather of the weights and a full copy per rank meanwhile."""
    models = list({id(m): m for m in models if m is not None}.values())
    sharded = [m for m in models if isinstance(m, FSDPModule)] if generate else []
    moved = [m for m in models if not isinstance(m, FSDPModule) and m.output_weight.device != device]
    for m in moved:
        m.to(device)
    for m in sharded:
        for layer in m.model.layers:
            layer.set_reshard_after_forward(False, recurse=False)  # stay gathered across decode steps
        for part in (m, *m.model.layers):
            part.unshard()
    try:
        yield
    finally:
        for m in sharded:
            for layer in m.model.layers:
                layer.set_reshard_after_forward(True, recurse=False)
            for part in (m, *m.model.layers):
                part.reshard()
        for m in moved:
            m.to("cpu")


def all_ranks(obj) -> list:
    """obj from every rank, in rank order ([obj] in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_items(items: list) -> list:
    """Every rank's list joined, in rank order (the list itself in a single process)."""
    return [x for part in all_ranks(items) for x in part]


def sum_over_ranks(counts: tuple) -> tuple:
    """Each count summed over the ranks (the counts themselves in a single process)."""
    return tuple(sum(c) for c in zip(*all_ranks(tuple(counts))))


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """A tensor averaged over the ranks by an all-reduce (x itself in a single process)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def gather_groups(groups) -> list:
    """Every rank's rollout groups, in rank order, without their tensors (for rank 0's metrics)."""
    if not dist.is_initialized():
        return groups
    light = [[{k: v for k, v in r.items() if k not in ("logp", "prompt")} for r in g] for g in groups]
    return [g for part in all_ranks(light) for g in part]


def merge_stats(stats: dict, tokens: float) -> dict:
    """ppo_update stats of all ranks -> one dict: token-weighted means; loss and grad_norm are already
    global (the loss is normalised by all ranks' tokens): plain means; sampler_logp_err: the max."""
    if not dist.is_initialized():
        return stats
    per_rank = all_ranks((stats, tokens))
    total = sum(n for _, n in per_rank) or 1.0
    out = {}
    for k in per_rank[0][0]:
        values = [st[k] for st, _ in per_rank]
        if k in ("loss", "grad_norm"):
            out[k] = sum(values) / len(values)
        elif k == "sampler_logp_err":
            out[k] = max(values)
        else:
            out[k] = sum(v * n for v, (_, n) in zip(values, per_rank)) / total
    return out


def full_model(policy):
    """A plain Qwen with the full weights: the policy itself in one process; under torchrun the
    shards gathered to rank 0's CPU (None on the other ranks; every rank must call this)."""
    from model import Qwen
    if not isinstance(policy, FSDPModule):
        return policy
    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    with torch.device("meta"):
        model = Qwen(policy.config)
    model.load_state_dict(state, assign=True)
    return model
