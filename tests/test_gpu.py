"""The CUDA paths (issue 17, item 5): each model trains on a GPU and learns what it learns on CPU
(the same settings trained on both, compared on P-ML Recall@20).

Marked ``gpu``: ``make test`` leaves them out, ``make gpu-check`` runs them; each skips where no
CUDA device is visible (a CPU build of torch, or no GPU).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (CPU torch build or no GPU)"),
]


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    from recemb.data import synth
    from recemb.data.config import SynthConfig
    from recemb.data.dataset import load_dataset

    out = tmp_path_factory.mktemp("gpu_synth")
    synth.generate(SynthConfig(users=200, items=100, events=8_000, topics=5, images=False, impressions=0), out)
    return load_dataset(out)


def _recall_vs_popularity(ds, make, name: str) -> tuple[float, float]:
    from recemb.data.splits import leave_last_out
    from recemb.data.vocab import Vocab
    from recemb.eval.baselines import PopularityScorer
    from recemb.eval.model_scorer import ModelScorer
    from recemb.eval.protocols import run_ml

    split = leave_last_out(ds.events)
    catalogue = Vocab.from_ids(ds.events["item_id"])
    pop = run_ml(split, PopularityScorer(), catalogue, ks=(20,))["recall@20"]
    model = run_ml(split, ModelScorer(make, name, side={"items": ds.items}), catalogue, ks=(20,))["recall@20"]
    return model, pop


def test_two_tower_fused_dmp_trains_on_cuda(small_synth):
    """torchrec's fused tables under DistributedModelParallel (NCCL, world size 1) on the GPU."""
    from recemb.models.two_tower.config import TwoTowerConfig
    from recemb.models.two_tower.model import TwoTower

    fast = dict(epochs=4, batch_size=256, mlp=[64], dim=32, embedding_dim=32, history_length=20, seed=0)
    recall = {}
    for device in ("cuda", "cpu"):
        cfg = TwoTowerConfig(**fast, device=device, backend="torchrec")
        recall[device], pop = _recall_vs_popularity(small_synth, lambda c=cfg: TwoTower(c), "two_tower")
    assert recall["cuda"] > pop * 1.2 and abs(recall["cuda"] - recall["cpu"]) < 0.05, (recall, pop)


def test_item2vec_torch_kernel_on_cuda(small_synth):
    from recemb.models.item2vec.config import Item2VecConfig
    from recemb.models.item2vec.model import Item2Vec

    sessions = small_synth.events.group_by("session_id", maintain_order=True).agg("item_id")["item_id"].to_list()
    model = Item2Vec(Item2VecConfig(dim=32, epochs=5, backend="torch", device="cuda", batch_size=2048)).fit(sessions)
    assert model.backend == "torch" and model.history[-1]["loss"] < model.history[0]["loss"]


def test_sequence_model_trains_on_cuda(small_synth):
    from recemb.models.sequence.config import SequenceConfig
    from recemb.models.sequence.model import SequenceModel

    recall = {}
    for device in ("cuda", "cpu"):
        cfg = SequenceConfig(dim=32, heads=2, max_length=20, epochs=4, batch_size=64, device=device, seed=0)
        recall[device], pop = _recall_vs_popularity(small_synth, lambda c=cfg: SequenceModel(c), "sequence")
    # What the model learns does not depend on the device (the CPU run here: 0.571 vs popularity 0.513).
    assert recall["cuda"] > pop and abs(recall["cuda"] - recall["cpu"]) < 0.05, (recall, pop)


def test_content_cnn_forward_backward_on_cuda():
    from recemb.models.content.image import SmallResNet

    net = SmallResNet(width=8).cuda()
    x = torch.rand(16, 3, 32, 32, device="cuda")
    target = torch.nn.functional.normalize(torch.randn(16, 32, device="cuda"), dim=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = 1 - torch.nn.functional.cosine_similarity(net(x), target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < losses[0] * 0.7
