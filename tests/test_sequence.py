"""The sequence model: windows, causal mask, weight tying, resume, Ray Train, and quality on synthetic sessions."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from model_contract import community_events

from recemb.data import synth
from recemb.data.config import SynthConfig
from recemb.data.dataset import load_dataset, write_dataset
from recemb.data.vocab import Vocab
from recemb.errors import DataValidationError, RecembError
from recemb.models.sequence.config import SequenceConfig
from recemb.models.sequence.model import SequenceModel
from recemb.models.sequence.net import SequenceNet
from recemb.models.sequence.windows import (
    PAD,
    Sequences,
    build_sequences,
    gap_buckets,
    query_windows,
    training_windows,
)

FAST = {
    "dim": 16,
    "heads": 2,
    "max_length": 8,
    "epochs": 3,
    "batch_size": 16,
    "threads": 1,
    "seed": 0,
    "lr": 0.01,
}  # a tiny world needs big steps


def csr(seqs: list[list[int]]) -> Sequences:
    items = np.array([i for s in seqs for i in s], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    return Sequences(items, np.zeros_like(items), offsets)


# --------------------------------------------------------------------------- windows
@pytest.mark.parametrize("length", [1, 3, 4, 50])
def test_every_position_is_a_target_exactly_once(length):
    rng = np.random.default_rng(length)
    seqs = [list(rng.integers(0, 30, size=n)) for n in [1, 2, 5, 9, 13, 0, 4]]
    w = training_windows(csr(seqs), length)
    valid = w.targets >= 0
    # (previous item, target) pairs in the windows == every consecutive pair of every sequence, once.
    got = sorted(zip((w.inputs[valid] - 1).tolist(), w.targets[valid].tolist(), strict=True))
    want = sorted((a, b) for s in seqs for a, b in zip(s[:-1], s[1:], strict=False))
    assert got == sorted((int(a), int(b)) for a, b in want)
    assert valid.sum() == sum(max(len(s) - 1, 0) for s in seqs)
    assert (w.lengths >= 1).all() and (w.lengths <= length).all()
    # right padding: a window's valid positions come first, and padding has no target
    assert ((w.inputs != PAD) == (np.arange(w.inputs.shape[1]) < w.lengths[:, None])).all()
    assert (w.targets[w.inputs == PAD] == -1).all()


def test_the_newest_window_is_full():
    w = training_windows(csr([list(range(7))]), 4)
    assert w.inputs.tolist() == [[3, 4, 5, 6], [1, 2, 0, 0]]  # input ids are rows + 1
    assert w.targets.tolist() == [[3, 4, 5, 6], [1, 2, -1, -1]]


def test_a_batch_pads_only_to_its_longest_window_and_carries_gaps():
    rng = np.random.default_rng(3)
    lengths = [6, 1, 3, 10, 2]
    items = rng.integers(0, 30, size=sum(lengths))
    gaps = rng.integers(1, 20, size=len(items))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    w = training_windows(Sequences(items, gaps, offsets), 4)
    rows = np.array([3, 0])
    inputs, g, targets, target_gaps = w.batch(rows)
    assert inputs.shape == (2, int(w.lengths[rows].max()))
    for b, r in enumerate(rows):  # each row: the window's items, then padding; gaps as the events had them
        s, n = int(w.starts[r]), int(w.lengths[r])
        assert inputs[b, :n].tolist() == (items[s : s + n] + 1).tolist() and (inputs[b, n:] == PAD).all()
        assert targets[b, :n].tolist() == items[s + 1 : s + n + 1].tolist() and (targets[b, n:] == -1).all()
        assert g[b, 0] == 0 and g[b, 1:n].tolist() == gaps[s + 1 : s + n].tolist()
        assert target_gaps[b, :n].tolist() == gaps[s + 1 : s + n + 1].tolist()
    full = w.padded()
    for mine, all_rows in zip((inputs, g, targets, target_gaps), full, strict=True):
        assert (mine == all_rows[rows, : inputs.shape[1]]).all()


def test_repeat_rate_and_the_auto_repeat_path():
    from recemb.models.sequence.fit import uses_repeat_path
    from recemb.models.sequence.windows import repeat_rate

    seqs = csr([[1, 2, 1], [3, 3], [4]])
    assert repeat_rate(seqs) == pytest.approx(2 / 3)  # 3 targets: 2 repeat their own history
    assert repeat_rate(csr([[1, 2, 3], [1, 2]])) == 0.0  # another session's item is no repeat
    auto = SequenceConfig(**FAST)
    assert auto.repeat == "auto" and uses_repeat_path(auto, repeat_rate(seqs)) and not uses_repeat_path(auto, 0.0)
    assert uses_repeat_path(SequenceConfig(**{**FAST, "repeat": True}), 0.0)


def test_gap_buckets_and_query_windows():
    assert gap_buckets(np.array([np.nan, -1.0, 0.0, 1.0, 3.0, 1e12]), 8).tolist() == [0, 0, 1, 2, 3, 7]
    inputs, gaps, lengths = query_windows(np.array([4, 5, 6, 7]), np.array([0, 0, 3, 4]), 2)
    assert lengths.tolist() == [0, 2, 1] and inputs.tolist() == [[0, 0], [6, 7], [8, 0]]
    assert (gaps[:, 0] == 0).all()


def test_build_sequences_orders_by_time_and_reads_sessions():
    ev = community_events(users_per_side=2, clicks=3).sample(fraction=1.0, shuffle=True, seed=1)
    vocab = Vocab.from_ids(ev["item_id"])
    seqs = build_sequences(ev, vocab, 8)
    assert len(seqs.offsets) - 1 == ev["session_id"].n_unique() and seqs.n_targets == ev.height - 4
    first = ev.filter(pl.col("session_id") == ev.sort("session_id")["session_id"][0]).sort("ts")
    assert vocab.ids[seqs.items[:3]].tolist() == first["item_id"].to_list()
    assert seqs.gaps[0] == 0 and (seqs.gaps[1:3] > 0).all()  # a minute apart


# --------------------------------------------------------------------------- network
def net_and_batch(**over):
    torch.manual_seed(0)
    config = SequenceConfig(**{**FAST, **over})
    net = SequenceNet(20, config, repeat=True).eval()  # repeat="auto" in config: on here
    inputs = torch.tensor([[3, 5, 7, 9, 11, 0], [2, 4, 0, 0, 0, 0]])
    return net, inputs, torch.ones_like(inputs)


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_a_position_never_sees_later_items(encoder):
    net, inputs, gaps = net_and_batch(encoder=encoder)
    before = net.hidden(inputs, gaps)
    changed = inputs.clone()
    changed[0, 3:] = torch.tensor([1, 1, 1])
    after = net.hidden(changed, gaps)
    torch.testing.assert_close(after[0, :3], before[0, :3])
    assert not torch.allclose(after[0, 3], before[0, 3])
    # the repeat attention of position t puts no weight on positions after t, nor on padding
    att = net.repeat_attention(before, inputs)
    assert torch.all(att[0].triu(1) == 0) and torch.all(att[1, :, 2:] == 0)
    torch.testing.assert_close(att[1, :2].sum(-1), torch.ones(2))


def test_item_embeddings_are_tied_between_input_and_output():
    net, inputs, gaps = net_and_batch()
    tables = [n for n, p in net.named_parameters() if p.dim() == 2 and p.shape[0] == 21]
    assert tables == ["items.weight"], "one item table, read by the input and the output"
    with torch.no_grad():
        net.items.weight[5] += 1.0
    out = net.item_matrix()
    torch.testing.assert_close(out[4], torch.nn.functional.normalize(net.items.weight[5], dim=-1))


@pytest.mark.parametrize("repeat", [True, False])
def test_scores_are_the_likelihood_at_the_last_position(repeat):
    net, inputs, gaps = net_and_batch(repeat=repeat)
    lengths = torch.tensor([5, 2])
    scores = net.scores(inputs, gaps, lengths)  # [2, 20]
    targets = torch.full_like(inputs, -1)
    targets[0, 4], targets[1, 1] = 13, 3  # the next item after each window's last
    log_p = net.log_likelihood(inputs, gaps, targets)
    p = scores if repeat else scores.log_softmax(-1).exp()
    torch.testing.assert_close(log_p, torch.stack([p[0, 13], p[1, 3]]).log(), atol=1e-5, rtol=1e-5)
    if repeat:
        torch.testing.assert_close(scores.sum(-1), torch.ones(2), atol=1e-5, rtol=1e-5)


def test_sampled_softmax_trains_too():
    ev = community_events()
    config = SequenceConfig(**{**FAST, "epochs": 8, "loss": "sampled", "negatives": 8, "repeat": False})
    model = SequenceModel(config).fit(ev)
    q = model.encode([["a1", "a2"], ["b1", "b2"]])
    es = model.item_embeddings()
    side_a = np.array([i.startswith("a") for i in es.ids.tolist()])
    assert (q[0] @ es.vectors.T)[side_a].mean() > (q[0] @ es.vectors.T)[~side_a].mean()


# --------------------------------------------------------------------------- training
def test_no_session_with_two_events_is_a_clear_error():
    ev = community_events().unique("session_id")
    with pytest.raises(DataValidationError, match="2 or more events"):
        SequenceModel(SequenceConfig(**FAST)).fit(ev)


def test_steps_per_epoch_caps_each_epoch_at_that_many_batches():
    ev = community_events()
    full = SequenceModel(SequenceConfig(**{**FAST, "epochs": 2, "batch_size": 4})).fit(ev)
    capped = SequenceModel(SequenceConfig(**{**FAST, "epochs": 2, "batch_size": 4, "steps_per_epoch": 2})).fit(ev)
    # A batch holds 4 windows; each window has at least one target, a full pass more than 2 batches' worth.
    assert all(h["targets"] < f["targets"] for h, f in zip(capped.history, full.history, strict=True))
    assert all(2 * 4 <= h["targets"] <= 2 * 4 * FAST["max_length"] for h in capped.history)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        SequenceConfig(**{**FAST, "steps_per_epoch": 0})


def test_resume_continues_exactly(tmp_path):
    ev = community_events()
    straight = SequenceModel(SequenceConfig(**FAST)).fit(ev)
    SequenceModel(SequenceConfig(**{**FAST, "epochs": 2})).fit(ev, checkpoint_dir=tmp_path)
    resumed = SequenceModel(SequenceConfig(**FAST)).fit(ev, checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    np.testing.assert_array_equal(resumed.item_embeddings().vectors, straight.item_embeddings().vectors)
    with pytest.raises(RecembError, match="dropout"):  # other settings: refused, not silently mixed
        SequenceModel(SequenceConfig(**{**FAST, "dropout": 0.5})).fit(ev, checkpoint_dir=tmp_path)


def test_injected_fault_in_process_resumes_and_matches(tmp_path):
    from recemb.testing import faults
    from recemb.train.ray_config import RayTrainConfig
    from recemb.train.sequence import train_sequence

    write_dataset(load_synth(tmp_path / "synth"), tmp_path / "data")
    config = SequenceConfig(**{**FAST, "epochs": 2})
    clean = SequenceModel.load(train_sequence(config, RayTrainConfig(), tmp_path / "data", tmp_path / "a"))
    with faults.inject("train.epoch", tmp_path / "fault.marker", epoch=2) as marker:
        out = train_sequence(config, RayTrainConfig(max_failures=1), tmp_path / "data", tmp_path / "b")
    assert marker.exists() and (out / "metrics.json").is_file()
    np.testing.assert_array_equal(SequenceModel.load(out).item_embeddings().vectors, clean.item_embeddings().vectors)


def test_window_store_round_trip_gives_the_same_batches_and_digest(tmp_path):
    from recemb.errors import DataValidationError
    from recemb.models.sequence.fit import training_data
    from recemb.models.sequence.window_store import load_window_store, write_window_store

    config = SequenceConfig(**{**FAST, "item_categories": True})
    ds = load_synth(tmp_path / "synth")
    built = training_data(config, ds.events, items=ds.items)
    loaded = load_window_store(write_window_store(tmp_path / "store", built, {}))  # items read per batch
    whole = load_window_store(tmp_path / "store", in_memory=True)
    assert whole.windows.in_memory().items.dtype == np.int32 and whole.windows.in_memory().gaps.dtype == np.uint8
    with pytest.raises(TypeError, match="in_memory=True"):
        loaded.windows.in_memory()
    assert loaded.digest == built.digest and loaded.repeat_rate == built.repeat_rate
    assert loaded.vocab.ids.tolist() == built.vocab.ids.tolist()
    assert loaded.categories.trained == built.categories.trained
    np.testing.assert_array_equal(loaded.categories.values, built.categories.values)
    rows = np.random.default_rng(0).permutation(len(built.windows))[:50]
    cases = [(loaded.windows, rows), (whole.windows, rows), (loaded.windows.take(rows), np.arange(len(rows)))]
    for windows, picked in cases:  # read from the files, loaded whole, a worker's share of the files
        for a, b in zip(windows.batch(picked), built.windows.batch(rows), strict=True):
            assert a.dtype == np.int64 and (a == b).all()

    items = np.load(tmp_path / "store" / "items.npy")
    np.save(tmp_path / "store" / "items.npy", np.where(np.arange(len(items)) == 5, len(built.vocab), items))
    with pytest.raises(DataValidationError, match="outside the .*vocabulary"):  # caught on load, not in training
        load_window_store(tmp_path / "store")
    np.save(tmp_path / "store" / "items.npy", items)
    np.save(tmp_path / "store" / "lengths.npy", built.windows.lengths[:-1])  # damaged: one window short
    with pytest.raises(DataValidationError, match="re-run"):
        load_window_store(tmp_path / "store")


def test_the_job_trains_from_its_window_store_as_the_in_memory_fit_does(tmp_path, caplog):
    from recemb.train.ray_config import RayTrainConfig
    from recemb.train.sequence import train_sequence

    ds = load_synth(tmp_path / "synth")
    write_dataset(ds, tmp_path / "data")
    config = SequenceConfig(**{**FAST, "epochs": 2})
    ray = RayTrainConfig(storage_path=str(tmp_path / "ray"))
    job = SequenceModel.load(train_sequence(config, ray, tmp_path / "data", tmp_path / "run"))
    in_memory = SequenceModel(config).fit(load_dataset(tmp_path / "data").events)
    np.testing.assert_array_equal(job.item_embeddings().vectors, in_memory.item_embeddings().vectors)
    assert (tmp_path / "ray" / "sequence.windows" / "store.json").is_file()
    # Run again with more epochs: the windows are reused (not rebuilt) and training resumes at epoch 3.
    with caplog.at_level("INFO", logger="recemb.sequence"):
        more = train_sequence(config.model_copy(update={"epochs": 3}), ray, tmp_path / "data", tmp_path / "run")
    assert "reusing the window store" in caplog.text
    assert [h["epoch"] for h in SequenceModel.load(more).history] == [1, 2, 3]


def load_synth(out, **over):
    cfg = SynthConfig(
        **{"users": 300, "items": 150, "events": 12_000, "topics": 6, "images": False, "impressions": 0, **over}
    )
    synth.generate(cfg, out)
    return load_dataset(out)


@pytest.mark.slow
def test_two_worker_torchtrainer_ddp(ray_local, tmp_path):
    from recemb.train.ray_config import RayTrainConfig
    from recemb.train.sequence import train_sequence

    write_dataset(load_synth(tmp_path / "synth"), tmp_path / "data")
    config = SequenceConfig(**{**FAST, "epochs": 2})
    ray = RayTrainConfig(workers=2, cpus_per_worker=0.5, storage_path=str(tmp_path / "ray"))
    out = train_sequence(config, ray, tmp_path / "data", tmp_path / "run")
    model = SequenceModel.load(out)
    assert [h["epoch"] for h in model.history] == [1, 2]
    assert model.history[0]["targets"] < load_dataset(tmp_path / "data").events.height / 2 + 100  # each worker half
    assert np.isfinite(model.item_embeddings().vectors).all()


# --------------------------------------------------------------------------- quality
@pytest.mark.slow
def test_sequence_beats_mean_pooled_tower_and_popularity_on_next_clicks(tmp_path):
    """P-SESS on synthetic sessions (seed 0): the sequence model's Recall@20 is the best of the three."""
    from recemb.eval.baselines import PopularityScorer
    from recemb.eval.config import EvalConfig
    from recemb.eval.evaluate import protocol_inputs, run_rows
    from recemb.eval.model_scorer import ModelScorer
    from recemb.models.two_tower.config import TwoTowerConfig
    from recemb.models.two_tower.model import TwoTower

    ds = load_synth(tmp_path / "synth", users=600, items=300, events=30_000)
    split, catalogue = protocol_inputs(ds, "sess", EvalConfig())
    scorers = {
        "popularity": PopularityScorer(),
        "two_tower": ModelScorer(lambda: TwoTower(TwoTowerConfig(backend="torch", epochs=4, seed=0)), "two_tower"),
        "sequence": ModelScorer(lambda: SequenceModel(SequenceConfig(epochs=10, seed=0)), "sequence"),
    }
    rows = {r["model"]: r["recall@20"] for r in run_rows("sess", split, catalogue, scorers, [20])}
    assert rows["sequence"] > 1.1 * rows["two_tower"] and rows["sequence"] > 1.5 * rows["popularity"], rows


# --------------------------------------------------------------------------- end to end
def test_pipeline_trains_exports_evaluates_and_serves_the_sequence_model(tmp_path, capsys):
    import asyncio

    from recemb.cli import main
    from recemb.retrieval.serve_config import ServeConfig
    from serving.state import load_snapshot

    cfg = tmp_path / "q.yaml"
    cfg.write_text(
        f"run: {{name: q, dir: {tmp_path}}}\n"
        "data:\n  source: synth\n  synth: {users: 60, items: 40, events: 3000, impressions: 0, images: false}\n"
        "sequence: {dim: 16, max_length: 8, epochs: 2, threads: 1}\n"
        "export: {n_trees: 2, sample: 10}\n"
        "eval: {protocols: [sess], k: [20], baselines: [popularity], models: [sequence]}\n"
        "stages: [data, sequence, export, evaluate]\n"
    )
    assert main(["pipeline", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "sequence" in out and "popularity" in out
    run = tmp_path / "q"
    assert (run / "sequence" / "weights.pt").is_file() and (run / "index" / "sequence" / "items.ann").is_file()
    tower = ServeConfig().user_tower.model_copy(update={"model": "sequence"})
    snap = load_snapshot(ServeConfig(run_dir=str(run), user_tower=tower), 1)
    assert snap.tower is not None and snap.tower.source == "sequence"
    items = SequenceModel.load(run / "sequence").item_embeddings().ids[:3].tolist()
    vec = asyncio.run(snap.tower_query(items, None))
    assert vec.shape == (16,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4


def test_warm_only_model_skips_p_cold_but_its_category_variant_runs_there():
    from recemb.config import build_config
    from recemb.stages.evaluate import model_scorers

    cfg = build_config({"eval": {"models": ["sequence", "sequence-category"]}})
    ds = load_synth_dataset_stub()
    assert list(model_scorers(cfg, "cold", ds)) == ["sequence-category"]
    assert list(model_scorers(cfg, "ml", ds)) == ["sequence"]


def load_synth_dataset_stub():
    """The side tables model_scorers reads (nothing is fitted here)."""
    from types import SimpleNamespace

    return SimpleNamespace(items=None, users=None, root=None)
