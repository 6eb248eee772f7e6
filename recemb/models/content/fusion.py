"""Fuse an item's parts (id, categorical, text, image, ...) into one ``[B, D]`` vector.

Every part arrives as ``[B, d_m]`` with a ``present`` mask ``[B]`` (an item
with no text, no image or no id history has ``present = False`` there).
Each part is projected to D; then

- ``mode="gated"``: a softmax over the *present* parts of a learned gate
  score per part (computed from the projected vector, so an informative
  text can outweigh a generic poster per item) weights their sum;
- ``mode="concat"``: the projected parts (zeros where absent) and the
  presence bits are concatenated and passed through an MLP.

An item with no part present gets a learned "no content" vector.

Modality dropout (DropoutNet, Volkovs et al. 2017): in training, each
present part is hidden with probability ``modality_dropout`` (at least one
part stays when one was present), so the model learns to cope with any
subset, in particular the id part missing as it is for a cold item.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from recemb.errors import ConfigError

FUSION_MODES = ("gated", "concat")


class ContentFusion(nn.Module):
    """Named parts ``{m: [B, d_m]}`` + masks ``{m: [B] bool}`` -> ``[B, out_dim]``.

    Args:
        parts: part name -> input dim d_m (order fixes the concat layout).
        out_dim: D.
        mode: ``"gated"`` or ``"concat"`` (module doc).
        modality_dropout: probability of hiding a present part in training.
        hidden: MLP width of ``concat`` mode.
    """

    def __init__(
        self,
        parts: Mapping[str, int],
        out_dim: int,
        mode: str = "gated",
        modality_dropout: float = 0.0,
        hidden: int = 256,
    ):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ConfigError(f"ContentFusion: mode must be one of {FUSION_MODES}, got {mode!r} (content.fusion)")
        if not parts:
            raise ConfigError("ContentFusion: no parts to fuse; enable at least one of content.text/image/category")
        if not 0 <= modality_dropout < 1:
            raise ConfigError(f"ContentFusion: modality_dropout must be in [0, 1), got {modality_dropout}")
        self.names = list(parts)
        self.mode, self.p_drop, self.out_dim = mode, modality_dropout, out_dim
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in parts.items()})
        if mode == "gated":
            self.gate = nn.ModuleDict({m: nn.Linear(out_dim, 1) for m in parts})
        else:
            k = len(parts)
            self.mlp = nn.Sequential(nn.Linear(k * out_dim + k, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.empty = nn.Parameter(torch.zeros(out_dim))

    def drop_mask(self, present: torch.Tensor) -> torch.Tensor:
        """``present [B, M]`` -> the mask after modality dropout (training only)."""
        if not self.training or self.p_drop == 0:
            return present
        keep = present & (torch.rand(present.shape, device=present.device) >= self.p_drop)
        # Where dropout hid every present part, restore one present part at random.
        lost = present.any(1) & ~keep.any(1)
        if lost.any():
            pick = torch.multinomial(present[lost].float(), 1).squeeze(1)
            restored = keep[lost].clone()
            restored[torch.arange(len(pick), device=pick.device), pick] = True
            keep[lost] = restored
        return keep

    def forward(self, feats: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``feats[m] [B, d_m]``, ``present[m] [B]`` bool -> ``[B, out_dim]``."""
        missing = [m for m in self.names if m not in feats or m not in present]
        if missing:
            raise ConfigError(f"ContentFusion: parts {missing} were configured but not passed to forward()")
        h = torch.stack([self.proj[m](feats[m]) for m in self.names], dim=1)  # [B, M, D]
        mask = self.drop_mask(torch.stack([present[m].bool() for m in self.names], dim=1))  # [B, M]
        if self.mode == "gated":
            logits = torch.cat([self.gate[m](h[:, i]) for i, m in enumerate(self.names)], dim=1)  # [B, M]
            logits = logits.masked_fill(~mask, float("-inf"))
            # A row with no part has all -inf logits: softmax would be NaN, so zero it and use `empty`.
            w = torch.softmax(logits, dim=1).nan_to_num(0.0)
            out = (w.unsqueeze(2) * h).sum(1)
        else:
            z = (h * mask.unsqueeze(2)).flatten(1)
            out = self.mlp(torch.cat([z, mask.float()], dim=1))
        none = ~mask.any(1)
        return torch.where(none[:, None], self.empty.expand_as(out), out)
