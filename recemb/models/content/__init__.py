"""Content encoders for items: hashed text n-grams, image CNNs, fusion, alignment (DESIGN.md §3).

Layout, one job per module:

- :mod:`.config`          ``ContentConfig``, the ``content:`` section of a pipeline YAML
- :mod:`.text`            fastText-style tokenizer + stable hashing, ``TextEncoder``
                          (``nn.EmbeddingBag`` or torchrec ``EmbeddingBagCollection``)
- :mod:`.image`           Pillow loading in DataLoader workers, ``SmallResNet``,
                          torchvision-layout ``MobileNetV2``, cached frozen features
- :mod:`.pretrained_text` optional frozen all-MiniLM-L6-v2 sentence embeddings
- :mod:`.fusion`          ``ContentFusion``: gated sum / concat+MLP, modality dropout
- :mod:`.encoder`         per-item ``ContentFeatures`` and the fused ``ContentEncoder``
- :mod:`.align`           InfoNCE loss, optimisers, targets and recall of the alignment
                          to a behavioural EmbeddingSet; its loop, ``content_embeddings``
                          and ``train_content`` are in :mod:`recemb.train.content`
"""
