"""Dense layers shared by the models."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(dims: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]``, each but the last followed by ReLU (then Dropout if ``dropout``).

    State dict keys are ``<i>.weight`` / ``<i>.bias`` by position in the
    Sequential (Linear, ReLU[, Dropout], Linear, ...), which saved towers and
    encoders rely on. ``dims`` of length 1 gives an empty Sequential, which
    returns its input unchanged.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
