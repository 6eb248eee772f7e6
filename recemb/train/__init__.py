"""Training: prepared dataset + config sections -> model artifacts under the run directory.

- :mod:`.checkpoints` one checkpoint abstraction (a directory per epoch; local or Ray Train)
- :mod:`.runner`      runs a ``train_loop(config)`` in-process or on ``TorchTrainer``;
                      ``WorkerContext`` (rank, world size, device, checkpoints)
- :mod:`.ray_config`  ``RayTrainConfig``, the ``ray:`` section
- :mod:`.item2vec`, :mod:`.two_tower`, :mod:`.content`: one module per model, each
  with its ``train_loop`` and its driver (``train_item2vec``, ``train_two_tower``,
  ``train_content``)
"""
