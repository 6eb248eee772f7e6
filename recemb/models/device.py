"""Where a model runs: the torch device and the sparse-table backend.

One place for the choices every model makes the same way: ``"auto"`` picks
CUDA when there is one, and asking for CUDA where there is none is a
:class:`~recemb.errors.ConfigError` that names the setting, not a failure
deep inside the first forward pass. torch and torchrec are imported inside
the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from recemb.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str, *, setting: str = "device") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises:
        ConfigError: CUDA is asked for but absent (or ``cuda:N`` names a
            device this machine lacks); ``setting`` (e.g. ``"item2vec.device"``)
            is the config key the message tells the user to change.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting}={device!r} but CUDA is not available here; set {setting}=cpu (or auto)")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(
                f"{setting}={device!r} but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1}); "
                f"set {setting}=cuda:0 (or auto)"
            )
    return resolved


@functools.cache
def torchrec_available() -> bool:
    """True when ``import torchrec`` works here (it needs a matching fbgemm build); tried once per process."""
    try:
        import torchrec  # noqa: F401
    except Exception:  # ImportError, or fbgemm's OSError/RuntimeError on a mismatched build
        return False
    return True


def resolve_sparse_backend(backend: str) -> str:
    """``"auto"`` -> ``"torchrec"`` when it imports, else ``"torch"``; anything else as given."""
    if backend != "auto":
        return backend
    return "torchrec" if torchrec_available() else "torch"
