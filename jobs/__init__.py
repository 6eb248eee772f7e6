"""Ray job entrypoints, one thin module per stage.

Run locally (Ray starts in-process) or on a cluster::

    python -m jobs.train_item2vec --config configs/quickstart.yaml
    ray job submit --working-dir . -- python -m jobs.train_item2vec --config configs/quickstart.yaml

Each module parses the config, joins or starts Ray, and calls one library
function; the library never imports this package.
"""
