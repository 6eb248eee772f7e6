"""Wrapping the towers for training: torchrec sharding and fused optimizers, or plain torch.

Everything torchrec- and process-group-specific lives here, so an upstream
API change touches one file (DESIGN.md §9 has the checked recipe):

- backend "torchrec": the EmbeddingBagCollections are built on ``meta``,
  given fused RowWiseAdagrad with ``_apply_optimizer_in_backward``, planned
  with ``EmbeddingShardingPlanner(...).collective_plan`` and wrapped in
  ``DistributedModelParallel`` (gloo on CPU, NCCL on CUDA; world size 1
  gets a private in-memory process group). Dense layers: Adam, combined with
  the fused optimizer in a ``CombinedOptimizer``.
- backend "torch": ``nn.EmbeddingBag`` tables and Adam over every parameter
  (the unfused baseline), DDP when world size > 1.

:meth:`Engine.full_state` gathers a plain, unsharded state (tensors only,
so checkpoints load with ``torch.load(weights_only=True)``) and
:meth:`Engine.load_full_state` scatters one back into the shards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

TABLE_MARK = "embedding_bags"  # in the name of every table parameter, both backends


def ensure_process_group(device: torch.device) -> bool:
    """Make sure a default process group exists; return True if created here (world size 1).

    DistributedModelParallel always needs one; a single process gets an
    in-memory store, so nothing listens on a port.
    """
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True


def _is_sharded(x: Any) -> bool:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return isinstance(x, ShardedTensor)


def _gather_tree(tree: Any, rank: int) -> Any:
    """Replace every ShardedTensor in a nested dict by its full tensor (on rank 0; None elsewhere)."""
    if isinstance(tree, dict):
        return {k: _gather_tree(v, rank) for k, v in tree.items()}
    if _is_sharded(tree):
        full = torch.empty(tree.size(), dtype=tree.dtype) if rank == 0 else None
        tree.gather(dst=0, out=full)
        return full
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    return tree


def _region(metadata: Any) -> tuple[slice, ...]:
    """Where a shard (its ``ShardMetadata``) sits in the full tensor."""
    return tuple(slice(o, o + s) for o, s in zip(metadata.shard_offsets, metadata.shard_sizes))


def _flatten(tree: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """``{key path: leaf}`` of a nested dict."""
    if not isinstance(tree, dict):
        return {path: tree}
    flat: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        flat.update(_flatten(v, (*path, k)))
    return flat


def _gather_owned_tree(tree: Any, rank: int, world_size: int, device: torch.device) -> Any:
    """Like :func:`_gather_tree` for a tree whose ShardedTensors exist only on the ranks that own a shard.

    torchrec's fused optimizer state lists only the tables a rank holds (a
    table-wise table's momentum is on its one owner), so ranks walk different
    keys and a per-key ``ShardedTensor.gather`` would wait forever for the
    ranks that lack the key. Here every rank learns the union of keys first,
    then takes part in one reduce per key, contributing its shards (zeros
    elsewhere): shards never overlap, so the sum is the full tensor on rank 0.
    Plain tensors (replicated state) are taken from rank 0.
    """
    flat = _flatten(tree)
    owned = {k: (tuple(v.size()), v.dtype) for k, v in flat.items() if _is_sharded(v)}
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, owned)
    shapes: dict[tuple[str, ...], tuple[tuple[int, ...], torch.dtype]] = {}
    for part in everyone:
        shapes.update(part)
    gathered: dict[tuple[str, ...], Any] = {}
    for key in sorted(shapes):
        size, dtype = shapes[key]
        full = torch.zeros(size, dtype=dtype, device=device)
        live = flat.get(key)
        if live is not None:
            for shard in live.local_shards():
                full[_region(shard.metadata)] = shard.tensor
        dist.reduce(full, dst=0)
        gathered[key] = full.cpu()
    if rank != 0:
        return None
    for key, leaf in flat.items():
        if key not in gathered:
            gathered[key] = leaf.detach().cpu().clone() if isinstance(leaf, torch.Tensor) else leaf
    nested: dict[str, Any] = {}
    for key, leaf in gathered.items():
        node = nested
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = leaf
    return nested


def _scatter_tree(live: Any, full: Any, where: str) -> None:
    """Copy ``full`` (plain tensors) into ``live`` in place: ShardedTensor local shards get their slice."""
    if isinstance(live, dict):
        for k, v in live.items():
            if k not in full:
                raise KeyError(f"checkpoint lacks {where}{k}; it was written by a different model setup")
            _scatter_tree(v, full[k], f"{where}{k}.")
        return
    if _is_sharded(live):
        for shard in live.local_shards():
            shard.tensor.detach().copy_(full[_region(shard.metadata)])
    elif isinstance(live, torch.Tensor):
        live.detach().copy_(full)


class Engine:
    """The trainable network, wrapped for one process of a (possibly 1-process) group.

    Attributes:
        net: what to call in training (DMP, DDP or the plain module).
        backend: "torchrec" or "torch".
        rank, world_size: of the default process group (0, 1 without one).
    """

    def __init__(
        self,
        build: Callable[[str, torch.device | None], nn.Module],
        backend: str,
        device: torch.device,
        lr: float,
        emb_lr: float,
        weight_decay: float = 0.0,
    ):
        self.backend, self.device = backend, device
        self.created_group = False
        if backend == "torchrec":
            self.created_group = ensure_process_group(device)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        if backend == "torchrec":
            self._wrap_torchrec(build, lr, emb_lr, weight_decay)
        else:
            self._wrap_plain(build, lr, weight_decay)

    def _wrap_torchrec(self, build, lr: float, emb_lr: float, weight_decay: float) -> None:
        from torch.distributed.optim import _apply_optimizer_in_backward
        from torchrec.distributed import DistributedModelParallel
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

        model = build("torchrec", None)
        tables = [p for n, p in model.named_parameters() if TABLE_MARK in n]
        # Fused into the backward pass: fbgemm updates each touched row in place,
        # so no dense gradient of a table is ever materialised.
        _apply_optimizer_in_backward(RowWiseAdagrad, tables, {"lr": emb_lr})
        sharders = [EmbeddingBagCollectionSharder()]
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=self.world_size, compute_device=self.device.type)
        )
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        if self.rank == 0:
            log.info("two_tower sharding plan (world size %d): %s", self.world_size, describe_plan(plan))
        self.net = DistributedModelParallel(model, device=self.device, plan=plan, sharders=sharders)
        dense = {n: p for n, p in self.net.named_parameters() if TABLE_MARK not in n}
        self._dense_opt: torch.optim.Optimizer | None = None

        def adam(params):
            self._dense_opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
            return self._dense_opt

        self.optimizer = CombinedOptimizer(
            [("sparse", self.net.fused_optimizer), ("dense", KeyedOptimizerWrapper(dense, adam))]
        )
        # Measured (torchrec 1.8, CPU): until the sharded weights and optimizer
        # state are gathered once, the fused steps run ~20x slower (ML-100K
        # epoch 1: ~110 s instead of ~5 s; reading the state dicts alone is not enough).
        self.full_state()

    def _wrap_plain(self, build, lr: float, weight_decay: float) -> None:
        model = build("torch", self.device)
        self.net = model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self._dense_opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.optimizer = self._dense_opt

    # ------------------------------------------------------------------ steps
    def step(self, loss: torch.Tensor) -> None:
        """Backward (fused table updates happen here) and the dense optimizer step."""
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)

    # ------------------------------------------------------------------ state
    def _module(self) -> nn.Module:
        return self.net.module if isinstance(self.net, nn.parallel.DistributedDataParallel) else self.net

    def full_state(self) -> dict[str, Any] | None:
        """Unsharded ``{"model", "sparse_optim", "dense_optim"}`` on rank 0 (None elsewhere). Collective."""
        model = _gather_tree(dict(self._module().state_dict()), self.rank)
        sparse = None
        if self.backend == "torchrec":
            state = self.net.fused_optimizer.state_dict()["state"]
            sparse = _gather_owned_tree(state, self.rank, self.world_size, self.device)
        if self.rank != 0:
            return None
        return {"model": model, "sparse_optim": sparse, "dense_optim": self._dense_optimizer().state_dict()}

    def load_full_state(self, state: dict[str, Any]) -> None:
        """Load a :meth:`full_state` on every rank (each keeps its own shards)."""
        _scatter_tree(dict(self._module().state_dict()), state["model"], "model.")
        if self.backend == "torchrec" and state.get("sparse_optim") is not None:
            _scatter_tree(self.net.fused_optimizer.state_dict()["state"], state["sparse_optim"], "sparse_optim.")
        self._dense_optimizer().load_state_dict(state["dense_optim"])

    def _dense_optimizer(self) -> torch.optim.Optimizer:
        if self._dense_opt is None:  # set while the net is wrapped, before any state is read
            raise RuntimeError("Engine: the dense optimizer is not built yet")
        return self._dense_opt

    def close(self) -> None:
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()
            self.created_group = False


def describe_plan(plan: Any) -> str:
    """One line per table of a torchrec sharding plan: ``table: sharding_type/kernel on ranks [..]``."""
    parts = []
    for module, params in getattr(plan, "plan", {}).items():
        for name, p in params.items():
            ranks = getattr(p, "ranks", None)
            parts.append(
                f"{module + '.' if module else ''}{name}: {getattr(p, 'sharding_type', '?')}/"
                f"{getattr(p, 'compute_kernel', '?')} on ranks {ranks}"
            )
    return "; ".join(parts) or "empty"
