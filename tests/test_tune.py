"""`recemb tune`: search spaces, validation splits that never hold test rows, trials, overlays, Ray Tune runs."""

from __future__ import annotations

import json
import time

import numpy as np
import polars as pl
import pytest
import yaml

from recemb.config import build_config, load_config
from recemb.data import synth
from recemb.data.dataset import load_dataset
from recemb.data.synth import SynthConfig
from recemb.errors import ConfigError
from recemb.eval.config import EvalConfig
from recemb.eval.evaluate import protocol_inputs, validation_inputs
from recemb.eval.validation import fit_events, scored_events
from recemb.stages.registry import MODELS, model_spec
from recemb.tune.search import TRAILING_STATE_FILE
from recemb.tune.space import apply_params, defaults, model_space, overlay_tree
from recemb.tune.trial import TrialSetup, report_epochs, run_trial, rungs

KEYS = ["user_id", "item_id", "ts"]


@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "synth"
    cfg = SynthConfig(users=200, items=80, events=6000, topics=4, images=False, impressions=300)
    synth.generate(cfg, out)
    return load_dataset(out)


# --------------------------------------------------------------------------- spaces
def test_every_declared_space_is_valid_and_holds_its_models_settings():
    cfg = build_config({})
    for spec in MODELS.values():
        if not spec.search_space:
            continue
        space = model_space(spec)
        first = defaults(cfg, spec, space)  # every key names a real setting
        low = {k: next(iter(d.values()))[0] for k, d in space.items()}
        high = {k: next(iter(d.values()))[-1] for k, d in space.items()}
        for params in (first, low, high):  # both ends of every dimension validate as a config
            apply_params(cfg, spec, params)


def test_space_overrides_replace_dimensions_and_bad_ones_are_refused():
    spec = model_spec("item2vec")
    space = model_space(spec, {"epochs": {"randint": [1, 3]}, "mode": {"choice": ["cbow"]}})
    assert space["epochs"] == {"randint": [1, 3]} and space["mode"] == {"choice": ["cbow"]}
    assert "window" in space  # the declared rest stays
    for bad in ({"epochs": {"randint": [5, 1]}}, {"alpha": {"loguniform": [0, 1]}}, {"dim": {"gaussian": [1, 2]}}):
        with pytest.raises(ConfigError, match="tune.spaces.item2vec"):
            model_space(spec, bad)
    with pytest.raises(ConfigError, match="no search space"):
        model_space(model_spec("content"))


def test_a_setting_that_does_not_exist_is_a_clear_error():
    cfg = build_config({})
    spec = model_spec("item2vec")
    with pytest.raises(ConfigError, match="windw"):
        defaults(cfg, spec, {"windw": {"choice": [1]}})
    with pytest.raises(ConfigError, match="unknown key 'item2vec.windw'"):
        apply_params(cfg, spec, {"windw": 3})
    with pytest.raises(ConfigError, match="item2vec.epochs"):
        apply_params(cfg, spec, {"epochs": 0})


def test_ray_integer_dimensions_include_both_ends():
    from recemb.tune.space import to_ray

    sampler = to_ray({"x": {"randint": [1, 3]}, "y": {"lograndint": [2, 4]}})
    xs = {sampler["x"].sample() for _ in range(300)}
    ys = {sampler["y"].sample() for _ in range(300)}
    assert xs == {1, 2, 3} and ys == {2, 3, 4}


def test_rungs_are_shares_of_each_trials_own_epochs():
    assert rungs(0.1, 3) == [10, 30, 100] and rungs(0.05, 2) == [5, 10, 20, 40, 100]
    assert report_epochs((10, 30, 100), 5) == {1, 2, 5}
    assert report_epochs((10, 30, 100), 150) == {15, 45, 150}


def test_the_configured_setting_is_kept_unless_the_best_beats_it_beyond_noise(tmp_path):
    import polars as pl

    from recemb.tune.noise import standard_error
    from recemb.tune.search import best_trials, write_best

    se = standard_error(0.26, 943)  # ~0.0143

    def trials(best: float, status: str = "completed") -> pl.DataFrame:
        rows = [
            (True, 0.26, "completed", '{"w": 1}'),
            (False, best, status, '{"w": 2}'),
            (False, 0.20, "completed", "{}"),
        ]
        return pl.DataFrame(
            [
                {"model": "m", "default": d, "score": sc, "status": st, "scored_rows": 943, "params": p}
                for d, sc, st, p in rows
            ]
        )

    near = best_trials(trials(0.26 + 0.8 * se), min_gain=1.0)["m"]
    assert near["default"] and near["kept"] and near["top_score"] == pytest.approx(0.26 + 0.8 * se)
    far = best_trials(trials(0.26 + 1.2 * se), min_gain=1.0)["m"]
    assert not far["default"] and not far.get("kept")
    assert not best_trials(trials(0.26 + 0.8 * se), min_gain=0.0)["m"]["default"]  # 0: the best always wins
    assert best_trials(trials(0.99, status="stopped"), min_gain=1.0)["m"]["default"]  # only completed trials count
    write_best(tmp_path / "best.yaml", {"m": near}, "ml", "recall@20")
    assert "configured, kept" in (tmp_path / "best.yaml").read_text()


# --------------------------------------------------------------------------- overlays
def test_overlay_round_trips_through_config_validation(tmp_path):
    from recemb.tune.search import write_best

    spec = model_spec("item2vec")
    params = {"window": 3, "ns_exponent": np.float64(-0.4999999999), "eval.query": "last"}
    row = {"params": json.dumps(overlay_tree(spec, params)), "score": 0.1}
    write_best(tmp_path / "best.yaml", {"item2vec": row}, "ml", "ndcg@10")
    base = tmp_path / "base.yaml"
    base.write_text("run: {name: x}\nitem2vec: {window: 10, epochs: 7}\n")
    cfg = load_config(base, overlays=[tmp_path / "best.yaml"])
    assert (cfg.item2vec.window, cfg.item2vec.epochs, cfg.eval.query) == (3, 7, "last")
    assert cfg.item2vec.ns_exponent == pytest.approx(-0.5)
    # --set still wins over an overlay; an overlay with an unknown key is refused, naming it.
    assert load_config(base, ["item2vec.window=2"], [tmp_path / "best.yaml"]).item2vec.window == 2
    (tmp_path / "bad.yaml").write_text("item2vec: {windw: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'item2vec.windw'"):
        load_config(base, overlays=[tmp_path / "bad.yaml"])
    with pytest.raises(ConfigError, match="no such overlay"):
        load_config(base, overlays=[tmp_path / "missing.yaml"])


# --------------------------------------------------------------------------- validation splits
@pytest.mark.parametrize("protocol", ["ml", "sess", "imp"])
def test_validation_split_holds_no_test_rows(synth_ds, protocol):
    e = EvalConfig()
    test_split, _ = protocol_inputs(synth_ds, protocol, e)
    val, catalogue = validation_inputs(synth_ds, protocol, e)
    test_rows = scored_events(protocol, test_split).select(KEYS).unique()
    read = pl.concat([fit_events(protocol, val).select(KEYS), scored_events(protocol, val).select(KEYS)])
    assert read.height > 0 and scored_events(protocol, val).height > 0
    assert read.join(test_rows, on=KEYS, how="semi").height == 0
    if protocol == "ml":  # the target is a user's second-to-last event: the test split's validation item
        assert val.test.join(test_split.validation, on=KEYS, how="anti").height == 0
        assert val.test.height > 0.8 * test_split.validation.height
    if protocol == "sess":
        assert val.test["ts"].min() >= val.train["ts"].min()
        assert set(val.test["item_id"].unique()) <= set(catalogue.ids.tolist())


# --------------------------------------------------------------------------- trials
def _setup(ds, cfg, model: str, protocol: str = "ml", percents=(50, 100)) -> TrialSetup:
    split, catalogue = validation_inputs(ds, protocol, cfg.eval)
    side = {"items": ds.items, "users": ds.users, "root": ds.root}
    metric = {"ml": "ndcg@10", "sess": "mrr@20", "imp": "auc"}[protocol]
    return TrialSetup(cfg, model, protocol, metric, split, catalogue, side, tuple(percents), 1)


def test_trial_reports_at_its_rungs_and_reads_only_the_validation_split(synth_ds):
    cfg = build_config({"item2vec": {"dim": 16, "epochs": 4}, "eval": {"k": [20]}})
    setup = _setup(synth_ds, cfg, "item2vec")
    reports: list[dict] = []
    last = run_trial({"window": 3, "epochs": 6}, setup, report=reports.append)
    assert [r["epoch"] for r in reports] == [3, 6] and [r["progress"] for r in reports] == [50, 100]
    assert last == reports[-1] and last["score"] == last["ndcg@10"] and "recall@20" in last
    assert last["fit_rows"] == setup.split.train.height and last["scored_rows"] == setup.split.test.height
    test_rows = protocol_inputs(synth_ds, "ml", cfg.eval)[0].test.height
    assert last["fit_rows"] + last["scored_rows"] + test_rows <= synth_ds.events.height


def test_a_trials_cost_is_estimated_from_its_first_epochs(synth_ds):
    from recemb.tune.trial import estimate_trial_seconds

    cfg = build_config({"sequence": {"dim": 16, "max_length": 10}, "eval": {"k": [20]}})
    setup = _setup(synth_ds, cfg, "sequence")
    short = estimate_trial_seconds({"epochs": 2}, setup)
    started = time.perf_counter()
    long = estimate_trial_seconds({"epochs": 400}, setup)
    probed = time.perf_counter() - started
    # 400 epochs are timed on their first 2: the estimate grows with the epochs, the probe does not.
    assert 0 < short < long and probed < long / 2, (short, long, probed)


def test_trial_of_each_tunable_model_runs_on_sessions_and_impressions(synth_ds):
    cfg = build_config(
        {
            "two_tower": {"dim": 16, "embedding_dim": 16, "mlp": [], "backend": "torch"},
            "sequence": {"dim": 16, "max_length": 10},
        }
    )
    for model, protocol in (("two_tower", "imp"), ("sequence", "sess")):
        reports: list[dict] = []
        last = run_trial({"epochs": 2}, _setup(synth_ds, cfg, model, protocol), report=reports.append)
        assert [r["epoch"] for r in reports] == [1, 2] and np.isfinite(last["score"]), (model, reports)


# --------------------------------------------------------------------------- the search, on Ray Tune
def _tune_config(tmp_path, **tune) -> object:
    return build_config(
        {
            "run": {"name": "t", "dir": str(tmp_path)},
            "data": {"source": "synth", "synth": {"users": 150, "items": 60, "events": 4000, "impressions": 0}},
            "eval": {"protocols": ["ml"], "k": [20], "models": ["item2vec"]},
            # A deliberately poor configured setting: one epoch at a tiny learning rate.
            "item2vec": {"dim": 16, "epochs": 1, "alpha": 0.0005, "threads": 1},
            "tune": {
                "trials": 4,
                "searcher": "random",  # draws inside the narrowed space (the walks: test_tune_local.py)
                "time_budget": None,
                "spaces": {"item2vec": {"epochs": {"randint": [5, 10]}, "alpha": {"loguniform": [0.01, 0.05]}}},
                **tune,
            },
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("searcher", ["random", "hybrid"])
def test_tiny_search_beats_the_configured_setting_and_resumes(ray_local, tmp_path, capsys, searcher):
    from recemb.tune.search import tune_run

    cfg = _tune_config(tmp_path, searcher=searcher)
    summary = tune_run(cfg)
    out = tmp_path / "t" / "tune"
    trials = pl.read_parquet(out / "trials.parquet")
    assert trials.height == 4 and trials.filter(pl.col("default")).height == 1
    s = summary["models"]["item2vec"]
    assert s["best_score"] > s["default_score"] * 1.2, s
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["item2vec"]["epochs"] >= 5 and best["item2vec"]["alpha"] >= 0.01
    applied = load_config_from(cfg, out / "best.yaml")
    assert applied.item2vec.epochs == best["item2vec"]["epochs"]
    history = pl.read_parquet(out / "history.parquet")
    assert history.height >= trials.height and history["at_s"].min() >= 0
    assert "validation ml ndcg@10" in capsys.readouterr().out
    if cfg.tune.stopping == "trailing":  # its reference is kept beside the experiment for a restore
        state = json.loads((out / "ray" / "item2vec" / TRAILING_STATE_FILE).read_text())
        completed = trials.filter(pl.col("status") == "completed")["score"]
        assert state["score"] == pytest.approx(completed.max())
    # Run again with the same settings: Ray Tune's experiment is restored, no trial is run twice.
    again = tune_run(cfg)
    assert pl.read_parquet(out / "trials.parquet")["trial"].sort().equals(trials["trial"].sort())
    assert again["models"]["item2vec"]["best_score"] == s["best_score"]


@pytest.mark.slow
def test_a_trial_killed_mid_training_is_retried(ray_local, tmp_path):
    from recemb.testing import faults
    from recemb.tune.search import tune_run

    cfg = _tune_config(tmp_path, trials=1, max_failures=1, scheduler="fifo")
    with faults.inject("train.epoch", tmp_path / "fault.marker", epoch=1) as marker:
        tune_run(cfg)
    assert marker.exists()
    trials = pl.read_parquet(tmp_path / "t" / "tune" / "trials.parquet")
    assert trials["status"].to_list() == ["completed"], trials


def load_config_from(cfg, overlay):
    """The config a user gets with ``--overlay``: ``cfg`` written out, the overlay merged over it."""
    from recemb.config import config_to_dict, merge_tree

    return build_config(merge_tree(config_to_dict(cfg), yaml.safe_load(overlay.read_text())))


def test_cli_tune_refuses_bad_options_clearly(tmp_path, capsys):
    from recemb.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("run: {name: c}\neval: {models: [content]}\n")
    assert main(["tune", str(cfg)]) == 2
    assert "nothing to tune" in capsys.readouterr().err
    assert main(["tune", str(cfg), "--models", "item2vec", "--time-budget", "soon"]) == 2
    assert "duration" in capsys.readouterr().err
    assert main(["tune", str(cfg), "--models", "nosuch"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err


def test_query_pooling_is_searched_inside_each_trial(synth_ds):
    from recemb.tune.space import query_grid, split_space

    space = model_space(model_spec("item2vec"))
    drawn, inside = split_space(space)
    assert "eval.query" in inside and "eval.query" not in drawn and "window" in drawn
    grid = query_grid(inside)
    assert {g["eval.query"] for g in grid} == {"last", "mean", "mean_last_n", "recency"}
    cfg = build_config({"item2vec": {"dim": 16, "epochs": 3}, "eval": {"k": [20], "query": "mean"}})
    setup = TrialSetup(**{**vars(_setup(synth_ds, cfg, "item2vec", percents=(100,))), "query_grid": grid})
    last = run_trial({}, setup, report=lambda _: None)
    assert last["score"] >= last["configured_score"]
    if last["score"] > last["configured_score"]:  # a better pooling was found: it is named
        assert last["query"] in {"last", "mean_last_n", "recency"} and last["ndcg@10"] == last["score"]


def test_blend_weights_are_fitted_on_validation_and_land_in_best_yaml(tmp_path, capsys):
    """A poorly configured item2vec beside co-visitation: the fitted blend scores at least as well
    as equal weights and as each source alone, on validation; the weights apply as an overlay."""
    from recemb.tune.search import TuneRequest, tune_run

    cfg = _tune_config(tmp_path)
    summary = tune_run(cfg, TuneRequest(blend_only=True))
    blend = summary["blend"]
    assert set(blend["weights"]) == {"covisit", "item2vec"} and blend["metric"] == "recall@20"
    assert blend["score"] >= blend["equal_score"] and blend["score"] >= max(blend["singles"].values())
    # The one-epoch item2vec is the weaker source: it never gets the larger weight.
    assert blend["singles"]["covisit"] > blend["singles"]["item2vec"]
    assert blend["weights"]["covisit"] >= blend["weights"]["item2vec"]
    out = tmp_path / "t" / "tune"
    applied = load_config_from(cfg, out / "best.yaml")
    assert applied.candidates.weights == blend["weights"]
    assert json.loads((out / "blend.json").read_text())["tried"] >= 3
    assert "blend weights on validation ml recall@20" in capsys.readouterr().out
