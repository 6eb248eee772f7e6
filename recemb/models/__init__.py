"""Models: trainers that emit EmbeddingSets (item2vec, two-tower, ...)."""
