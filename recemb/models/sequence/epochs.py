"""The one epoch loop of the sequence model, run by ``SequenceModel.fit`` and by each Ray Train worker.

Every epoch is a pure function of (weights, optimizer state, seed, epoch):
the window order and every random draw (dropout, sampled negatives) are
seeded from ``(seed, epoch, rank)``, so a run resumed from the checkpoint of
epoch e continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.net import SequenceNet
from recemb.models.sequence.windows import Windows

SORT_CHUNK = 32  # batches whose windows are sorted by length together (less padding, still shuffled)


def uses_full_softmax(config: SequenceConfig, n_items: int) -> bool:
    """True when the loss is a softmax over the whole catalogue (``loss: auto`` decides by its size)."""
    if config.loss == "auto":
        return n_items <= config.full_softmax_max_items
    return config.loss == "full"


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Window indices of each batch of ``epoch``: shuffled, sorted by length inside chunks of batches."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches = []
    chunk = batch_size * SORT_CHUNK
    for c in range(0, len(order), chunk):
        part = order[c : c + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class SequenceTrainer:
    """Network + Adam + the epoch loop.

    Args:
        net: the (possibly DDP-wrapped) network; ``module`` is the SequenceNet.
        config: the ``sequence:`` section.
        device: where batches go.
    """

    def __init__(self, net: torch.nn.Module, module: SequenceNet, config: SequenceConfig, device: torch.device):
        self.net, self.module, self.config, self.device = net, module, config, device
        self.optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.full = uses_full_softmax(config, module.n_items)

    def run_epoch(self, windows: Windows, epoch: int, rank: int = 0) -> dict[str, Any]:
        """Train one pass over ``windows`` (this worker's share; at most ``steps_per_epoch`` batches of it);
        return ``{loss, targets, seconds}``."""
        torch.manual_seed(self.config.seed * 1_000_003 + epoch * 1009 + rank)
        self.net.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        batches = epoch_batches(windows.lengths, self.config.batch_size, self.config.seed * 7919 + rank, epoch)
        # Every rank holds as many windows, hence as many batches: the cap keeps their step counts equal.
        batches = batches[: self.config.steps_per_epoch]
        for step, idx in enumerate(batches):
            self._set_lr((epoch + step / len(batches)) / self.config.epochs)
            inputs, gaps, targets, target_gaps = (torch.from_numpy(a).to(self.device) for a in windows.batch(idx))
            negatives = None
            if not self.full:
                negatives = torch.randint(self.module.n_items, (self.config.negatives,), device=self.device)
            # The query gap is hidden (unknown) at random, as it is for callers that do not know it.
            hide = torch.rand(target_gaps.shape, device=self.device) < self.config.query_gap_dropout
            log_p = self.net(inputs, gaps, targets, negatives, target_gaps.masked_fill(hide, 0))
            loss = -log_p.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(log_p)
            count += len(log_p)
        return {"loss": total / max(count, 1), "targets": count, "seconds": time.perf_counter() - t0}

    def _set_lr(self, progress: float) -> None:
        """The learning rate at ``progress`` in [0, 1) of the run: a function of the step alone (exact resume)."""
        lr = self.config.lr
        if self.config.lr_schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state(self) -> dict[str, Any]:
        """Tensors only (``torch.load(weights_only=True)`` reads it back): weights and optimizer."""
        return {"net": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
