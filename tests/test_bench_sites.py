"""The simulated-site bench's tables (bench/sites_tables.py) on made-up scores of two models:
what `python -m bench.sites table` prints, without training."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from bench.sites_scores import RESULTS, SCORES_FILE
from bench.sites_tables import TABLES, print_tables
from melanoma.params.sites import SiteParams


def _group(rng, n: int, melanoma_share: float, shift: float = 0.0, moved: float = 0.0) -> dict:
    """A group's scores: melanoma logits ~ N(1 + shift, 1.5), others' ~ N(-2 + shift, 1.5);
    features ~ N(1, 0.3) in 8 dimensions, `moved` along the first two (another camera)."""
    is_melanoma = rng.random(n) < melanoma_share
    logits = np.where(is_melanoma, 1.0, -2.0) + shift + rng.normal(0, 1.5, n)
    features = rng.normal(1, 0.3, (n, 8)) + moved * np.array([1, -1, 0, 0, 0, 0, 0, 0])
    return {
        "melanoma": expit(logits),
        "features": features,
        "unfamiliar": rng.random(n) * 0.1,
        "is_melanoma": is_melanoma,
    }


def _write_step(step: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = {
        "validation": _group(rng, 600, 0.2),
        "other_clinic": _group(rng, 900, 0.2, shift=-1.0, moved=0.8),
        "non_lesion": _group(rng, 30, 0.0),
    }
    groups["non_lesion"]["unfamiliar"] += 1
    arrays = {f"{g}/{k}": v for g, fields in groups.items() for k, v in fields.items()}
    (RESULTS / step).mkdir(parents=True)
    with open(RESULTS / step / SCORES_FILE, "wb") as file:
        np.savez(file, unfamiliar_threshold=np.float64(0.5), **arrays)


def test_the_tables_hold_each_rule_the_drift_check_and_the_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("bench.sites_tables.SAMPLE_DRAWS", 40)  # the bench's 100 cost seconds
    monkeypatch.setattr("bench.sites_tables.HEAD_DRAWS", 5)
    for seed in (42, 43):
        _write_step(f"made_up_seed{seed}", seed)
    params = SiteParams(target_sensitivity=0.8, confidence=0.9, drift_permutations=100)
    tables = print_tables(["made_up_seed42", "made_up_seed43", "made_up_seed44"], params)

    printed = capsys.readouterr().out
    assert "## rules" in printed and "## drift" in printed and "## warning" in printed
    assert "## head" in printed
    assert Path(TABLES).is_file()
    rules = tables["rules"].loc["made_up"]
    for rule in ("order_statistic (default)", "logit_normal", "beta_prior", "global"):
        assert (("other_clinic", 20, rule)) in rules.index
    kept = float(
        rules.loc[("other_clinic", 20, "order_statistic (default)"), "kept"].split(" ± ")[0]
    )
    assert kept >= 0.75
    # The global threshold does not move with the clinic's shifted scores.
    missed = rules.loc[("other_clinic", 20, "global"), "kept"]
    assert float(missed.split(" ± ")[0]) < kept

    drift = tables["drift"].loc["made_up", "drifted"]
    assert float(drift["other_clinic"].split(" ± ")[0]) >= 0.8
    assert float(drift["validation (held out)"].split(" ± ")[0]) <= 0.1
    warning = tables["warning"].loc["made_up", "flagged"]
    assert float(warning["non_lesion"].split(" ± ")[0]) == 1.0
    assert float(warning["validation"].split(" ± ")[0]) == 0.0
    # Each target against its figure: on logit-normal scores the default rule keeps its promise.
    targets = tables["targets"]
    assert targets.loc[("kept >= 0.90 of samples of 20", "made_up", "other_clinic"), "met"]
    assert targets.loc[("drift flags <= 5%", "made_up", "validation (held out)"), "met"]
    assert targets.loc[("warning >= 95% of non-lesions", "made_up", "non_lesion"), "met"]
    assert "## targets" in printed


def test_the_head_table_adopts_it_where_a_feature_separates_the_sites_melanomas(monkeypatch):
    from bench.sites_tables import head_rows

    monkeypatch.setattr("bench.sites_tables.SAMPLE_MELANOMAS", (20,))
    monkeypatch.setattr("bench.sites_tables.HEAD_DRAWS", 10)
    rng = np.random.default_rng(5)
    separable = _group(rng, 600, 0.2, shift=-1.0)
    separable["features"][:, 2] += 1.0 * separable["is_melanoma"]  # 3 sds: the model ignores it
    scores = {"validation": _group(rng, 300, 0.2), "separable": separable}
    scores["no_better"] = _group(rng, 600, 0.2, shift=-1.0)
    rows = pd.DataFrame(head_rows("made_up_seed42", scores, SiteParams()))

    by_site = rows.groupby("site").mean(numeric_only=True)
    assert by_site.loc["separable", "adopted"] >= 0.9
    assert by_site.loc["separable", "auc with"] > by_site.loc["separable", "auc without"] + 0.05
    assert by_site.loc["no_better", "adopted"] <= 0.2
    separable_rows = rows[rows["site"] == "separable"]
    assert (
        separable_rows["specificity with"].median()
        > separable_rows["specificity without"].median() + 0.1
    )


def test_a_loco_site_is_its_source_s_own_images_and_a_missing_model_names_its_command(
    tmp_path, monkeypatch
):
    from bench import clinics, sites

    manifest = pd.DataFrame(
        {
            "image_path": ["a.png", "a_detail84.png", "b.png", "c.png", "d.png"],
            "source": ["ham10000", "ham10000", "ham10000", "ham10000", "bcn20000"],
            "split": ["train", "train", "val", "test", "train"],
            "augmented": [False, True, False, False, False],
            "label": ["melanoma", "melanoma", "nevus", "nevus", "melanoma"],
        }
    )

    paths, is_melanoma = sites.labelled_images(sites.source_rows(manifest, "ham10000"), tmp_path)

    # Not its low-detail copies, not the test split, not another source's.
    assert paths == [tmp_path / "a.png", tmp_path / "b.png"]
    assert is_melanoma.tolist() == [True, False]
    monkeypatch.setattr(clinics, "RESULTS", tmp_path / "clinics")
    monkeypatch.setattr(sites, "RESULTS", tmp_path / "sites")
    with pytest.raises(SystemExit, match="bench.clinics train four_detail_bcn_half --seeds 42"):
        sites.run_loco_step("ham10000", 42)
    assert not (tmp_path / "sites").exists()
