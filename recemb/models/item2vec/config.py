"""``Item2VecConfig``: the ``item2vec:`` section of a pipeline YAML.

Defaults follow gensim's Word2Vec where it has the same knob (so a
comparison with the same hyper-parameters is a comparison of code), except
``dim`` = 64 and ``min_count`` = 1, the usual choices for item catalogues.
Knobs that matter for recommendations (Caselles-Dupré et al. 2018): window
(0 = the whole session), ``ns_exponent`` (negative values favour rare items
as negatives), ``sample``, many epochs and the linear LR decay.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recemb.section import Section


class Item2VecConfig(Section):
    """Hyper-parameters and execution settings of item2vec training."""

    mode: Literal["skipgram", "cbow"] = "skipgram"
    dim: int = Field(64, ge=1)
    window: int = Field(5, ge=0)  # max distance to a context item; 0 = the whole session
    shrink_windows: bool = True  # draw each centre's window uniformly from 1..window (word2vec)
    negatives: int = Field(5, ge=1)
    ns_exponent: float = 0.75  # negatives ~ count**ns_exponent; 0 = uniform, < 0 favours rare items
    # Skip-gram: draw one set of negatives per centre, shared by its context items
    # (Ji et al. 2016; faster, slightly worse after few epochs), or per
    # (centre, context) pair as word2vec does (default). numba backend only.
    shared_negatives: bool = False
    sample: float = Field(1e-3, ge=0)  # sub-sampling threshold of frequent items; 0 = off
    min_count: int = Field(1, ge=1)  # items seen fewer times get no vector
    epochs: int = Field(5, ge=1)
    alpha: float = Field(0.025, gt=0)  # learning rate at the start (CBOW: word2vec.c uses 0.05) ...
    min_alpha: float = Field(1e-4, ge=0)  # ... decayed linearly to this over all epochs
    seed: int = 0
    backend: Literal["auto", "numba", "torch"] = "auto"  # auto: numba on CPU, torch on CUDA
    # torch backend: "cpu", "cuda", "cuda:1", or auto (cuda when available)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    threads: int = Field(0, ge=0)  # numba threads; 0 = numba's default (all cores)
    # torch backend: training pairs (skip-gram) or centres (CBOW) per step
    batch_size: int = Field(16384, ge=1)


# What `recemb tune` varies (recemb.tune.space): the knobs Caselles-Dupre et al. (2018) found to
# move next-item recall by tens of percent, wide enough for data unlike any tuned here.
SEARCH_SPACE: dict[str, dict[str, list]] = {
    "ns_exponent": {"uniform": [-1.0, 1.0]},
    "window": {"choice": [1, 2, 3, 5, 10, 20, 0]},  # 0 = the whole session
    "epochs": {"lograndint": [5, 200]},
    "sample": {"choice": [0.0, 1e-5, 1e-4, 1e-3, 1e-2]},
    "negatives": {"randint": [2, 20]},
    "alpha": {"loguniform": [0.005, 0.1]},
    "dim": {"choice": [32, 64, 128]},
    "eval.query": {"choice": ["last", "mean", "mean_last_n", "recency"]},  # how a history pools its vectors
}
