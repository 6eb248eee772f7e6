"""Item2vec (Barkan & Koenigstein 2016): skip-gram / CBOW with negative sampling over sessions.

Layout, one job per module:

- :mod:`.config`     ``Item2VecConfig``, the ``item2vec:`` section of a pipeline YAML
- :mod:`.corpus`     canonical events -> sessions as CSR int32 arrays, sub-sampling
                     keep-probabilities, the unigram^ns_exponent negative table
- :mod:`.sgns_cpu`   the numba Hogwild kernel (CPU backend)
- :mod:`.sgns_torch` the batched torch kernel (CUDA backend; also runs on CPU)
- :mod:`.epochs`     ``EpochRunner`` (the SGNS state) and the one epoch loop, also run by
                     ``recemb.train.item2vec`` on each Ray Train worker
- :mod:`.model`      ``Item2Vec``: fit, embeddings(), similar(), word2vec export
"""
