"""Training stages: prepared dataset + config -> model artifacts under the run directory."""
