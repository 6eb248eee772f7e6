"""The command line end to end on a tiny synthetic dataset (in-process)."""

import json

import pytest

from recemb.cli import main


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "synth"
    rc = main(
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--users",
            "60",
            "--items",
            "40",
            "--events",
            "3000",
            "--impressions",
            "50",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    return out


def test_synth_then_describe_json(tiny_synth, capsys):
    capsys.readouterr()
    assert main(["data", "describe", str(tiny_synth), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    counts = d["counts"]
    assert counts["users"] <= 60 and counts["items"] == 40
    assert 2500 <= counts["events"] <= 3500


def test_bad_config_key_exits_2_with_message(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run: {name: x, dir: " + str(tmp_path) + "}\ndata: {source: synth, sinth: {}}\n")
    assert main(["pipeline", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml" in err and "data.sinth" in err


def test_describe_of_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    assert main(["data", "describe", str(tmp_path)]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err


def test_pipeline_runs_data_and_evaluate_then_skips_data(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"run: {{name: tiny, dir: {tmp_path}}}\n"
        "data:\n  source: synth\n  synth: {users: 80, items: 50, events: 4000, impressions: 60, images: false}\n"
        "eval: {protocols: [ml, sess, imp], baselines: [popularity, knn]}\n"
        "stages: [data, evaluate]\n"
    )
    assert main(["pipeline", str(cfg)]) == 0
    summary = json.loads((tmp_path / "tiny" / "pipeline.json").read_text())
    assert set(summary["stages"]) == {"data", "evaluate"}
    assert summary["stages"]["data"]["skipped"] is False
    metrics = json.loads((tmp_path / "tiny" / "eval" / "metrics.json").read_text())
    assert metrics  # the evaluate stage wrote its results
    assert main(["pipeline", str(cfg)]) == 0
    summary = json.loads((tmp_path / "tiny" / "pipeline.json").read_text())
    assert summary["stages"]["data"]["skipped"] is True


def test_prepare_unknown_source_is_a_clear_error(capsys):
    assert main(["data", "prepare", "nosuch", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "data.source" in err and "movielens-100k" in err


def test_export_without_embeddings_says_what_to_do(tmp_path, capsys):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"run: {{name: none, dir: {tmp_path}}}\n")
    assert main(["export", str(cfg)]) == 2
    assert "holds no EmbeddingSet" in capsys.readouterr().err


def test_export_and_evaluate_pick_up_the_runs_embedding_sets(tmp_path, capsys):
    import numpy as np

    from recemb.data.dataset import load_dataset
    from recemb.embeddings import EmbeddingSet

    cfg = tmp_path / "x.yaml"
    cfg.write_text(
        f"run: {{name: r, dir: {tmp_path}}}\n"
        "data:\n  source: synth\n  synth: {users: 60, items: 40, events: 3000, impressions: 0, images: false}\n"
        "eval: {protocols: [ml], baselines: [popularity], run_embeddings: true}\n"
        "export: {n_trees: 4, sample: 20}\n"
        "stages: [data]\n"
    )
    assert main(["pipeline", str(cfg)]) == 0
    items = load_dataset(tmp_path / "r" / "data").items
    # Topic one-hot vectors: a stand-in for a trained model's EmbeddingSet.
    onehot = np.eye(int(items["topic"].max()) + 1, dtype=np.float32)[items["topic"].to_numpy()]
    EmbeddingSet(items["item_id"].to_list(), onehot, kind="test").save(tmp_path / "r" / "topics" / "embeddings")
    assert main(["export", str(cfg)]) == 0
    assert (tmp_path / "r" / "index" / "topics" / "items.ann").is_file()
    capsys.readouterr()
    assert main(["evaluate", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "topics" in out and "popularity" in out


def test_pipeline_reruns_only_what_a_config_change_touches(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        f"run: {{name: s, dir: {tmp_path}}}\n"
        "data:\n  source: synth\n  synth: {users: 60, items: 40, events: 3000, impressions: 0, images: false}\n"
        "item2vec: {epochs: 2, threads: 1}\n"
        "export: {n_trees: 2, sample: 10}\n"
        "eval: {protocols: [ml], baselines: [popularity]}\n"
        "stages: [data, item2vec, export, evaluate]\n"
    )
    assert main(["pipeline", str(cfg)]) == 0
    capsys.readouterr()
    # Only export and what follows it depend on export.n_trees.
    assert main(["pipeline", str(cfg), "--set", "export.n_trees=3"]) == 0
    out = capsys.readouterr().out
    assert "stage data: up to date" in out and "stage item2vec: up to date" in out
    assert "== stage export\n" in out and "== stage evaluate\n" in out
    summary = json.loads((tmp_path / "s" / "pipeline.json").read_text())["stages"]
    assert [summary[s]["skipped"] for s in ("data", "item2vec", "export", "evaluate")] == [True, True, False, False]
