"""Worker for the 2-process DTensor Muon test (kept apart so spawned processes import little)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from recur.optim.muon import MuonWithAdamW


def muon_problem(seed: int) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Two non-square matrices and four steps of their gradients (the same for the same seed)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(24, 16), (16, 40)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(4)]
    return params, grads


def dtensor_muon_worker(rank: int, init_file: str) -> None:
    """Rank `rank` of 2: Muon on row- and column-sharded DTensors must equal Muon on the full matrices."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        init, grads = muon_problem(2)
        placements = [[Shard(0)], [Shard(1)]]  # both layouts: row shards (FSDP2) and column shards
        sharded = [nn.Parameter(distribute_tensor(p.clone(), mesh, pl)) for p, pl in zip(init, placements)]
        plain = [nn.Parameter(p.clone()) for p in init]
        # A sharded 1-D parameter rides along in the AdamW half, as FSDP2 shards every parameter.
        bias = torch.linspace(-1, 1, 10)
        sharded_bias = nn.Parameter(distribute_tensor(bias.clone(), mesh, [Shard(0)]))
        plain_bias = nn.Parameter(bias.clone())
        kwargs = {"lr": 0.02, "weight_decay": 0.1, "adjust_lr": "match_rms_adamw"}
        opt = MuonWithAdamW([{"params": sharded, "use_muon": True}, {"params": [sharded_bias]}], **kwargs)
        ref_opt = MuonWithAdamW([{"params": plain, "use_muon": True}, {"params": [plain_bias]}], **kwargs)
        for step_grads in grads:
            for s, p, g, pl in zip(sharded, plain, step_grads, placements):
                s.grad = distribute_tensor(g.clone(), mesh, pl)
                p.grad = g.clone()
            sharded_bias.grad = distribute_tensor(torch.cos(bias), mesh, [Shard(0)])
            plain_bias.grad = torch.cos(bias)
            opt.step()
            ref_opt.step()
        assert torch.allclose(sharded_bias.full_tensor(), plain_bias.detach())
        for s, p in zip(sharded, plain):
            assert s.to_local().shape[0] < p.shape[0] or s.to_local().shape[1] < p.shape[1]  # really sharded
            assert torch.equal(s.full_tensor(), p.detach()), "sharded Muon differs from the full-matrix Muon"
            assert opt.state[s]["momentum_buffer"].placements == s.placements  # state stays sharded
    finally:
        dist.destroy_process_group()
