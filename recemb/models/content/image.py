"""Item images: loading, CNN backbones and the image encoder head (DESIGN.md §3).

- :class:`ImageFiles` / :func:`load_images`: decode and resize with Pillow in
  ``DataLoader`` workers into a ``[N, 3, S, S]`` uint8 array plus an ``[N]``
  ``ok`` mask. A missing, empty, truncated or corrupt file is never fatal:
  it gets ``ok = False`` (zeros) and the encoder substitutes a learned
  "no image" vector.
- :class:`SmallResNet`: a small ResNet trained from scratch (the default;
  64x64 inputs, ~0.3M parameters, cheap on CPU).
- :class:`MobileNetV2`: plain-torch MobileNetV2 whose ``state_dict`` keys match
  torchvision's layout, so the ImageNet weights
  (``weights/mobilenet_v2-b0353104.pth``) load with ``strict=True`` via
  :func:`load_mobilenet_v2` (``torch.load(weights_only=True)``; torchvision
  does not install beside this torch build).
- :func:`cached_features`: frozen-backbone features ``[N, F]`` cached per item
  in an ``.npz`` keyed by item id + sha256 of the image file, so a changed or
  new poster is recomputed and nothing else is.
- :class:`ImageHead`: features ``[B, F]`` -> ``[B, D]``, the learned "no image"
  vector where ``present`` is False.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from recemb.errors import RecembError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONES = ("small_resnet", "mobilenet_v2")
_CACHE_VERSION = 1


# ------------------------------------------------------------------ loading


def read_image(path: Path | None, size: int) -> tuple[np.ndarray, bool]:
    """One image as ``[3, size, size]`` uint8 (RGB, resized) and whether it loaded.

    Anything Pillow cannot open or fully decode yields zeros and ``False``.
    """
    blank = np.zeros((3, size, size), dtype=np.uint8)
    if path is None:
        return blank, False
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # OSError covers missing files, truncated data and unknown formats.
        return blank, False
    return np.ascontiguousarray(arr.transpose(2, 0, 1)), True


class ImageFiles(torch.utils.data.Dataset):
    """``paths[i]`` (relative to ``root``; None = no image) -> ``(uint8 [3, S, S], ok)``."""

    def __init__(self, paths: Sequence[str | None], root: str | os.PathLike | None, size: int):
        self.root = Path(root) if root is not None else None
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def resolve(self, i: int) -> Path | None:
        name = self.paths[i]
        if name is None or name == "":
            return None
        p = Path(name)
        return p if p.is_absolute() or self.root is None else self.root / p

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        arr, ok = read_image(self.resolve(i), self.size)
        return torch.from_numpy(arr), ok


def load_images(
    paths: Sequence[str | None],
    root: str | os.PathLike | None,
    size: int = 64,
    num_workers: int = 0,
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image: ``([N, 3, size, size] uint8, [N] bool ok)``.

    Decoding runs in ``num_workers`` DataLoader worker processes (0 = in this
    process). Failures are counted and logged once, never raised.
    """
    ds = ImageFiles(paths, root, size)
    out = np.zeros((len(ds), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(ds), dtype=bool)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    pos = 0
    for images, good in loader:
        n = len(good)
        out[pos : pos + n] = images.numpy()
        ok[pos : pos + n] = good.numpy()
        pos += n
    missing = int((~ok).sum())
    if missing:
        given = sum(1 for p in paths if p)
        log.warning(
            "images: %d of %d items have no usable image (%d have no path, %d failed to load); "
            "they get the learned 'no image' vector",
            missing,
            len(ds),
            len(ds) - given,
            missing - (len(ds) - given),
        )
    return out, ok


def normalize(images: torch.Tensor, imagenet: bool = False) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> float ``[B, 3, S, S]`` in [0, 1], ImageNet-standardised if asked."""
    x = images.float() / 255.0
    if imagenet:
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


# ------------------------------------------------------------------ backbones


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class SmallResNet(nn.Module):
    """ResNet-style CNN from scratch: ``[B, 3, S, S]`` float -> ``[B, 4 * width]`` pooled features.

    A 3x3 stem then three stages of one basic block each (widths ``w, 2w, 4w``;
    the last two halve the resolution), global average pooling.
    """

    imagenet_normalized = False

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            _BasicBlock(width, width, 1), _BasicBlock(width, 2 * width, 2), _BasicBlock(2 * width, 4 * width, 2)
        )
        self.out_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def _conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    # torchvision's Conv2dNormActivation: keys <i>.0 (conv), <i>.1 (bn).
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_act(cin, hidden, k=1))
        layers += [
            _conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), width 1.0, in torchvision's module layout.

    ``forward`` returns ``[B, 1280]`` pooled features; :meth:`logits` adds the
    ImageNet classifier (``[B, 1000]``). Inputs are ImageNet-standardised
    float images ``[B, 3, S, S]`` (224 in training; smaller works, coarser).
    """

    imagenet_normalized = True
    # (expansion t, channels c, repeats n, first stride s), torchvision's table.
    SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_act(cin, 1280, k=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        self.out_dim = 1280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward(x))


def load_mobilenet_v2(weights: str | os.PathLike, device: str | torch.device = "cpu") -> MobileNetV2:
    """MobileNetV2 with a torchvision ImageNet state dict, every key matched (``strict=True``)."""
    weights = Path(weights)
    if not weights.exists():
        raise RecembError(
            f"{weights}: MobileNetV2 weights not found; point content.image_weights at torchvision's "
            "mobilenet_v2-b0353104.pth, or use content.image_backbone=small_resnet"
        )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RecembError(f"{weights}: not a torchvision MobileNetV2 (width 1.0) state dict: {e}") from None
    return model.to(device).eval()


Backbone = SmallResNet | MobileNetV2  # both have out_dim: the width of their features


def make_backbone(name: str, weights: str | os.PathLike | None = None, width: int = 32, device="cpu") -> Backbone:
    """``"small_resnet"`` (random init) or ``"mobilenet_v2"`` (ImageNet weights from ``weights``)."""
    if name == "small_resnet":
        return SmallResNet(width).to(device)
    if name == "mobilenet_v2":
        if weights is None:
            raise RecembError("mobilenet_v2 needs its weights file (content.image_weights)")
        return load_mobilenet_v2(weights, device)
    raise RecembError(f"unknown image backbone {name!r}; choose from {BACKBONES} (content.image_backbone)")


# ------------------------------------------------------------------ frozen features


def file_digest(path: Path | None) -> str:
    """sha256 of a file's bytes, or ``"-"`` when there is no readable file."""
    if path is None:
        return "-"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "-"


@torch.no_grad()
def backbone_features(
    backbone: nn.Module, images: np.ndarray, device: str | torch.device = "cpu", batch_size: int = 64
) -> np.ndarray:
    """``[N, 3, S, S]`` uint8 -> ``[N, F]`` float32 features of a frozen backbone (eval mode)."""
    backbone.eval()
    out = []
    imagenet = getattr(backbone, "imagenet_normalized", False)
    for lo in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[lo : lo + batch_size]).to(device), imagenet)
        out.append(backbone(x).float().cpu().numpy())
    dim = getattr(backbone, "out_dim", 0)
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


def cached_features(
    backbone: Backbone,
    tag: str,
    item_ids: Sequence[str],
    paths: Sequence[str | None],
    root: str | os.PathLike | None,
    size: int,
    cache_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features ``[N, F]`` float32 and ``ok [N]`` for ``item_ids``, via a per-item cache.

    The cache ``<cache_dir>/<tag>-<size>.npz`` maps ``item_id + "\\0" + sha256``
    to a feature row; only items whose key is absent are decoded and run.
    ``tag`` names the backbone and its weights (e.g. ``"mobilenet_v2-b0353104"``).
    """
    files = ImageFiles(paths, root, size)
    keys = np.array([f"{iid}\0{file_digest(files.resolve(i))}" for i, iid in enumerate(item_ids)], dtype=object)
    cache = Path(cache_dir) / f"{tag}-{size}.npz"
    known: dict[str, int] = {}
    old_feats = old_ok = None
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if int(z["version"]) == _CACHE_VERSION:
                known = {k: i for i, k in enumerate(z["keys"].tolist())}
                old_feats, old_ok = z["features"], z["ok"]
    rows = np.array([known.get(k, -1) for k in keys], dtype=np.int64)
    todo = np.flatnonzero(rows < 0)
    dim = backbone.out_dim
    feats = np.zeros((len(keys), dim), dtype=np.float32)
    ok = np.zeros(len(keys), dtype=bool)
    hit = rows >= 0
    if hit.any():
        assert old_feats is not None and old_ok is not None  # rows >= 0 only for keys read from the cache
        feats[hit], ok[hit] = old_feats[rows[hit]], old_ok[rows[hit]]
    if len(todo):
        images, good = load_images([paths[i] for i in todo.tolist()], root, size, num_workers)
        feats[todo] = backbone_features(backbone, images, device)
        ok[todo] = good
        feats[todo[~good]] = 0.0
        cache.parent.mkdir(parents=True, exist_ok=True)
        # A name of this process's own: Ray workers of one job may fill the same cache at once.
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, version=_CACHE_VERSION, keys=keys.astype(str), features=feats, ok=ok)
        os.replace(tmp, cache)
    log.info("image features %s: %d cached, %d computed", tag, int(hit.sum()), len(todo))
    return feats, ok


# ------------------------------------------------------------------ head


class ImageHead(nn.Module):
    """Backbone features ``[B, F]`` -> ``[B, D]``; rows without an image get a learned vector.

    Args:
        in_dim: backbone feature size F.
        out_dim: D.
        hidden: optional MLP width between them (0 = one linear layer).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)  # frozen ImageNet features have wildly different scales
        self.proj = (
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
            if hidden
            else nn.Linear(in_dim, out_dim)
        )
        self.missing = nn.Parameter(torch.zeros(out_dim))

    def forward(self, feats: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``feats [B, F]``, ``present [B]`` bool -> ``[B, D]``."""
        y = self.proj(self.norm(feats))
        return torch.where(present[:, None], y, self.missing.expand_as(y))
