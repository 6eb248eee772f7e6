"""Every registered model passes the shared contract tests (tests/model_contract.py)."""

from __future__ import annotations

from model_contract import ModelContract

from recemb.stages.registry import MODELS


def test_every_registered_model_has_a_contract_test_class():
    tested = {cls.model_name for cls in ModelContract.__subclasses__()}
    assert set(MODELS) <= tested, f"registered models without contract tests: {set(MODELS) - tested}"


class TestItem2VecContract(ModelContract):
    model_name = "item2vec"

    def make_model(self):
        from recemb.models.item2vec.config import Item2VecConfig
        from recemb.models.item2vec.model import Item2Vec

        # threads=1: Hogwild across threads is not bit-reproducible.
        return Item2Vec(Item2VecConfig(dim=16, epochs=10, window=0, threads=1, seed=3))


class TestTwoTowerContract(ModelContract):
    model_name = "two_tower"

    def make_model(self):
        from recemb.models.two_tower.config import TwoTowerConfig
        from recemb.models.two_tower.model import TwoTower

        config = TwoTowerConfig(
            epochs=3, batch_size=32, dim=16, embedding_dim=16, mlp=[32], history_length=10, backend="torch", seed=0
        )
        return TwoTower(config)


class TestContentContract(ModelContract):
    model_name = "content"
    determinism_atol = 1e-5  # SparseAdam updates summed in a different order are not bit-equal

    def make_model(self):
        from recemb.models.content.config import ContentConfig
        from recemb.models.content.model import ContentModel
        from recemb.models.item2vec.config import Item2VecConfig

        content = ContentConfig(epochs=5, batch_size=8, buckets=1 << 10, text_dim=16, seed=0)
        return ContentModel(content, Item2VecConfig(dim=16, epochs=5, window=0, threads=1))


class TestSequenceContract(ModelContract):
    model_name = "sequence"

    def make_model(self):
        from recemb.models.sequence.config import SequenceConfig
        from recemb.models.sequence.model import SequenceModel

        return SequenceModel(
            SequenceConfig(dim=16, heads=2, max_length=8, epochs=8, batch_size=16, lr=0.01, threads=1, seed=0)
        )


class TestSequenceCategoriesContract(ModelContract):
    """The sequence model with item categories: cold items get a vector from their categories."""

    model_name = "sequence"

    def make_model(self):
        from recemb.models.sequence.config import SequenceConfig
        from recemb.models.sequence.model import SequenceModel

        config = SequenceConfig(
            dim=16, heads=2, max_length=8, epochs=8, batch_size=16, lr=0.01, threads=1, seed=0, item_categories=True
        )
        return SequenceModel(config)
