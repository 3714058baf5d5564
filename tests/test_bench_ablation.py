"""Issue #29's resumable ablation steps (bench/ablation_steps.py) on made-up runs: what is
skipped, what is averaged, what the table says. Nothing is trained here."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import ablation_runs, ablation_steps
from melanoma.labels import LABELS, MELANOMA, MELANOMA_INDEX
from melanoma.metrics import melanoma_auc, probability_column

N_EXTERNAL = 40


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Step files and seed folders under tmp_path; a made-up external set of N_EXTERNAL images
    (one in four a melanoma, the rest nevi)."""
    monkeypatch.setattr(ablation_steps, "step_file", lambda step: tmp_path / f"{step}.json")
    monkeypatch.setattr(ablation_steps, "RESULTS", tmp_path)
    labels = np.where(np.arange(N_EXTERNAL) % 4 == 0, MELANOMA_INDEX, LABELS.index("nevus"))
    monkeypatch.setattr(ablation_runs, "external_set", lambda: ([], labels))
    return tmp_path


def _probabilities(rng, true: np.ndarray, signal: float) -> np.ndarray:
    melanoma = 1 / (1 + np.exp(-(rng.normal(0, 1, len(true)) + signal * (true == MELANOMA_INDEX))))
    probabilities = np.zeros((len(true), len(LABELS)))
    probabilities[:, MELANOMA_INDEX] = melanoma
    probabilities[:, LABELS.index("nevus")] = 1 - melanoma
    return probabilities


def _seed_row(folder, seed: int) -> dict:
    """A trained seed's row with its validation predictions (two sources) and external
    probabilities on disk."""
    rng = np.random.default_rng(seed)
    labels = np.array([MELANOMA, "nevus"] * 30)
    sources = np.repeat(["ham10000", "isic_collection"], 30)
    validation = pd.DataFrame(
        {
            "image_path": [
                f"data/ingested/images/{s}/train/{la}/{i}.png"
                for i, (s, la) in enumerate(zip(sources, labels, strict=True))
            ],
            "label": labels,
        }
    )
    true = validation["label"].map(LABELS.index).to_numpy()
    columns = [probability_column(label) for label in LABELS]
    validation[columns] = _probabilities(rng, true, 1.0)
    folder.mkdir(parents=True)
    validation.to_csv(folder / "validation_predictions.csv", index=False)
    _, external_true = ablation_runs.external_set()
    np.save(folder / "external.npy", _probabilities(rng, external_true, 1.0))
    figures = ablation_runs.figures_of(validation, np.load(folder / "external.npy"))
    return {
        "name": "lite0",
        "seed": seed,
        **figures,
        "features_seconds": 100.0 if seed == 42 else 1.0,  # the first seed fills the store
        "validation_predictions": str(folder / "validation_predictions.csv"),
        "external_probabilities": str(folder / "external.npy"),
    }


def test_the_ensemble_row_scores_the_mean_of_the_seeds_probabilities(results):
    models = [dict(_seed_row(results / f"seed{s}", s), backbone="lite0") for s in (42, 43, 44)]

    rows = ablation_steps.ensemble_rows(models)

    assert [row["name"] for row in rows] == ["lite0 alone"] * 3 + ["lite0 ensemble of 3"]
    validation = [pd.read_csv(row["validation_predictions"]) for row in models]
    averaged = np.mean([v[probability_column(MELANOMA)] for v in validation], axis=0)
    is_melanoma = validation[0]["label"].eq(MELANOMA).to_numpy()
    assert rows[-1]["validation"]["melanoma_auc"] == pytest.approx(
        melanoma_auc(is_melanoma, averaged)
    )
    # Independent errors average out: the ensemble ranks better than the mean seed.
    alone = np.mean([row["validation"]["melanoma_auc"] for row in rows[:3]])
    assert rows[-1]["validation"]["melanoma_auc"] > alone
    table = ablation_steps.seed_table(rows)
    assert table.loc["lite0 alone", "seeds"] == 3
    assert table.loc["lite0 ensemble of 3", "seeds"] == 1
    assert {"val_auc_ham10000", "val_auc_isic_collection", "ext_melanoma_auc"} <= set(table)
    assert table.loc["lite0 alone", "features_seconds"] == "100"


def test_ensembles_group_consecutive_seeds_and_each_is_scored_beside_its_members(
    results, monkeypatch
):
    trained = []

    def run(name, overrides, seed, out, root):
        trained.append((name, overrides, seed, root))
        return _seed_row(out, seed)

    monkeypatch.setattr(ablation_steps, "run", run)
    models = [{"backbone": "lite0", "overrides": {}, "seed": 42}]

    rows = ablation_steps.ensembles_rows(models, results / "ensembles")

    one_model = ablation_steps.ONE_MODEL
    assert trained == [("ensembles", one_model, s, None) for s in ablation_steps.ENSEMBLE_SEEDS]
    ensembles = [row for row in rows if row["name"] == "lite0 ensemble of 3"]
    assert [row["seed"] for row in ensembles] == ["42+43+44", "45+46+47", "48+49+50"]
    assert len(rows) == len(ablation_steps.ENSEMBLE_SEEDS) + len(ensembles)
    table = ablation_steps.seed_table(rows)
    assert table.loc["lite0 alone", "seeds"] == 9 and table.loc["lite0 ensemble of 3", "seeds"] == 3


def test_a_measured_step_is_skipped_until_code_or_params_change(results, monkeypatch):
    trained = []

    def backbone_rows(step, overrides):
        trained.append(step)
        return [_seed_row(results / f"run{len(trained)}" / f"seed{s}", s) for s in (42, 43)]

    monkeypatch.setattr(ablation_steps, "backbone_rows", backbone_rows)
    monkeypatch.setattr(ablation_steps, "step_key", lambda step: "code-1")

    first = ablation_steps.run_step("backbone_lite0")
    again = ablation_steps.run_step("backbone_lite0")

    assert trained == ["backbone_lite0"] and again == first
    assert json.loads((results / "backbone_lite0.json").read_text())["key"] == "code-1"
    assert ablation_steps.backbone_models()[0]["backbone"] == "lite0"
    assert ablation_steps.backbone_models("lite0") == ablation_steps.backbone_models()
    with pytest.raises(RuntimeError, match="backbone_lite2` first"):
        ablation_steps.backbone_models("lite2")
    monkeypatch.setattr(ablation_steps, "step_key", lambda step: "code-2")
    ablation_steps.run_step("backbone_lite0")
    assert trained == ["backbone_lite0", "backbone_lite0"]
    with pytest.raises(ValueError, match="unknown step 'lite3'"):
        ablation_steps.run_step("lite3")


def test_each_step_has_its_own_key_for_the_same_code():
    assert ablation_steps.step_key("views") == ablation_steps.step_key("views")
    assert ablation_steps.step_key("views") != ablation_steps.step_key("blocks")


def test_blocks_trains_the_best_backbone_with_two_blocks_in_its_own_data(results, monkeypatch):
    trained = []

    def run(name, overrides, seed, out, root):
        trained.append((overrides, seed, root))
        return {"name": name, "seed": seed}

    monkeypatch.setattr(ablation_steps, "run", run)
    best = [
        {
            "name": "backbone_lite1",
            "seed": s,
            "backbone": "lite1",
            "root": "/copy",
            "overrides": {"train.architecture": "efficientnet_lite1"},
        }
        for s in ablation_steps.SEEDS
    ]

    rows = ablation_steps.block_rows(best, results)

    assert [row["name"] for row in rows] == ["lite1 1 block"] * 3 + ["lite1 2 blocks"] * 3
    overrides = {
        "train.architecture": "efficientnet_lite1",
        **ablation_steps.ONE_MODEL,
        "train.freeze": 2,
    }
    assert trained == [(overrides, seed, Path("/copy")) for seed in ablation_steps.SEEDS]
