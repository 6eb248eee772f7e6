"""``recemb tune``: hyper-parameter search on the validation split with Ray Tune.

- :mod:`.config`: the ``tune:`` section;
- :mod:`.space`: search spaces (declared next to each model, overridable) and
  how a trial's settings become a validated pipeline config;
- :mod:`.validation`: the validation splits (the test part is never read);
- :mod:`.trial`: one trial: fit, score the validation split per epoch, report;
- :mod:`.search`: the driver: one Ray Tune experiment per model, outputs
  under ``<run>/tune/`` (``trials.parquet``, ``history.parquet``, ``best.yaml``).
"""
