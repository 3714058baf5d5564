"""The benchmark: its quick mode end to end, and the project-copy helpers it shares with tests."""

import json
import math
import subprocess
import sys

import pytest
import yaml

from bench import loops
from bench.pipeline import changed_metrics, stages_run
from bench.project import PROJECT, copy_project, override_params, pin_source_deps
from bench.run_table import scaling_rows
from bench.seeds import independent_seeds
from melanoma.config import load_params
from tests.helpers import train_params

BOTH_SIDES = {
    "epochs_run",
    "train_images",
    "first_epoch_seconds",
    "seconds_per_epoch",
    "images_per_second",
    "val_accuracy",
    "raw_test_accuracy",
    "training_peak_rss_mib",
}
WITH_INTERVALS = {
    "clean_test_accuracy",
    "clean_test_balanced_accuracy",
    "clean_test_melanoma_auc",
}
# Ours only, with a bootstrap interval and a spread over seeds, for every evaluation set.
SET_FIGURES = {
    f"{set_name}_{figure}"
    for set_name in ("test", "isic2018")
    for figure in (
        "accuracy",
        "balanced_accuracy",
        "melanoma_auc",
        "melanoma_sensitivity",
        "melanoma_specificity",
    )
}
CALIBRATION = {"test_ece", "isic2018_ece"}
STAGES = list(yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"])
# What each threshold rule delivers on the external set's reporting half, over seeds.
RULES = {
    f"rule_{rule}_isic2018_{figure}"
    for rule in ("validation", "isic2018", "pooled", "shift_margin")
    for figure in ("sensitivity", "specificity")
}
OURS_ONLY = {
    "images_per_second_ratio",
    *(f"stage_seconds_{stage}" for stage in STAGES),
    "full_repro_seconds",
    "head_only_repro_seconds",
    "noop_repro_seconds",
    "predict_p50_ms",
    "predict_p95_ms",
    "predict_peak_rss_mib",
    "melanoma_threshold",
    *(
        f"serve_{run}_{figure}"
        for run in ("single_client", "concurrent_clients", "batched")
        for figure in ("p50_ms", "p95_ms", "requests_per_second", "images_per_second")
    ),
    "serve_body_bytes_per_image",
    "serve_body_bytes_per_file_byte",
    "serve_peak_rss_mib",
    "serve_max_abs_difference",
}


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow  # the whole pipeline, twice, in a copy
def test_quick_benchmark_reports_every_figure_and_its_spread_over_seeds(tmp_path):
    out = tmp_path / "bench.json"

    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--seeds", "2", "--out", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {row["key"]: row for row in results["table"]}
    yes_no = {"reproducible", "champion_kept_over_seeds"}
    assert set(rows) == (
        BOTH_SIDES | WITH_INTERVALS | OURS_ONLY | SET_FIGURES | CALIBRATION | RULES | yes_no
    )
    for key in BOTH_SIDES | WITH_INTERVALS:
        assert _finite(rows[key]["reference"]) and _finite(rows[key]["ours"]), rows[key]
    for key in WITH_INTERVALS:
        for side in ("reference", "ours"):
            low, high = rows[key][f"{side}_ci"]
            assert _finite(low) and _finite(high) and low <= rows[key][side] <= high, rows[key]
    for key in OURS_ONLY:
        assert rows[key]["reference"] is None and _finite(rows[key]["ours"]), rows[key]
    ratio = rows["images_per_second"]["ours"] / rows["images_per_second"]["reference"]
    assert results["images_per_second_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert rows["images_per_second_ratio"]["ours"] == results["images_per_second_ratio"]
    for key in SET_FIGURES:
        assert rows[key]["reference"] is None and rows[key]["ours_ci"] is not None, rows[key]
        spread = rows[key]["spread"]
        assert spread["n"] == 2 and spread["min"] <= spread["mean"] <= spread["max"], rows[key]
    # The served champion answers each test file as `melanoma predict` does, from a body of
    # the file's base64 (4/3 of it, plus a few bytes of JSON).
    assert rows["serve_max_abs_difference"]["ours"] <= 1e-5
    assert rows["serve_body_bytes_per_file_byte"]["ours"] <= 1.5
    assert results["seeds"]["seeds"] == [42, 43]
    (extra,) = results["seeds"]["runs"]  # the first seed is the pipeline's own run
    auc = [
        results["ours"]["report"]["test"]["melanoma_auc"],
        extra["metrics"]["test"]["melanoma_auc"],
    ]
    assert rows["test_melanoma_auc"]["spread"]["min"] == min(auc)
    assert rows["champion_kept_over_seeds"]["ours"] == (extra["decision"] == "kept")
    # Same params, same machine: the forced second train + evaluate scores exactly the same.
    assert rows["reproducible"]["ours"] is True, results["ours"]["reproducibility_differences"]
    assert results["ours"]["noop_repro_stages_run"] == []
    # A head-only change trains on the cached features: nothing before train runs again.
    head_only = results["ours"]["head_only_stages_run"]
    assert head_only[0] == "train" and "features" not in head_only
    assert rows["full_repro_seconds"]["ours"] == pytest.approx(
        sum(rows[f"stage_seconds_{stage}"]["ours"] for stage in STAGES)
    )
    for key in RULES:
        spread = rows[key]["spread"]
        assert spread["n"] == 2 and 0 <= spread["min"] <= spread["max"] <= 1, rows[key]
    assert results["data"]["clean_test_images"] == results["ours"]["clean_test"]["images"]
    # Quick mode: 4 files of each of the 4 class folders; half of them choose the threshold
    # when the params' rule uses isic2018 (all but `validation`), and only the other half is
    # reported.
    choose_on = load_params(PROJECT / "params.yaml").evaluate.operating_point.choose_on
    reported = 16 if choose_on == "validation" else 8
    assert results["data"]["external_images"] == {"isic2018": reported}
    for row in results["table"]:
        assert row["figure"] in done.stdout


def test_independent_seeds_start_past_an_ensemble_s_members():
    assert independent_seeds(train_params(seed=42), 3) == [42, 43, 44]
    # An ensemble of 3 trains seeds 42, 43 and 44: the next model sharing none starts at 45.
    assert independent_seeds(train_params(seed=42, ensemble=3), 3) == [42, 45, 48]


def test_the_loops_join_the_table_with_their_targets():
    measured = {"noop_repro_seconds": 1.3, "noop_repro_stages_run": [], "test_fast_seconds": 56.0}

    rows = loops.table_rows(measured)

    assert [row["key"] for row in rows] == ["loops_noop_repro_seconds", "loops_test_fast_seconds"]
    assert [row["figure"] for row in rows] == [
        "no-op dvc repro, this workspace (target <= 2 s)",
        "make test-fast (target <= 60 s)",
    ]
    assert [row["ours"] for row in rows] == [1.3, 56.0]


def test_a_copy_reading_other_sources_keeps_only_their_source_weights(tmp_path):
    project = load_params(PROJECT / "params.yaml")
    kept = project.data.sources[0].model_dump(mode="json")
    weights = {s.name: 0.5 for s in project.data.sources}

    copy = copy_project(tmp_path / "copy", {"train.source_weights": weights})
    override_params(copy / "params.yaml", {"data.sources": [kept]})

    params = load_params(copy / "params.yaml")
    assert params.train.source_weights == {kept["name"]: 0.5}


def test_override_params_sets_dotted_keys_in_a_copy(tmp_path):
    sources = [{"name": "isic", "kind": "folders", "path": "/elsewhere"}]
    copy = copy_project(tmp_path / "copy", {"train.epochs": 3, "data.sources": sources})

    params = yaml.safe_load((copy / "params.yaml").read_text())
    assert params["train"]["epochs"] == 3 and params["data"]["sources"] == sources
    assert (copy / "stages" / "train.py").is_file() and (copy / ".dvc" / "config").is_file()
    assert not (copy / "data").exists() and not (copy / "models").exists()


@pytest.mark.parametrize("key", ["train.epoch", "trian.epochs", "train.epochs.value"])
def test_override_params_refuses_a_param_the_file_lacks(tmp_path, key):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 20}}))

    with pytest.raises(KeyError, match=key):
        override_params(path, {key: 1})

    assert yaml.safe_load(path.read_text()) == {"train": {"epochs": 20}}


def test_stages_run_lists_only_stages_dvc_ran():
    output = (
        "Stage 'ingest' didn't change, skipping\n"
        "Running stage 'train':\n> python -m stages.train\n"
        "Stage 'augment' is cached - skipping run, checking out outputs\n"
        "Running stage 'evaluate':\n> python -m stages.evaluate\n"
    )

    assert stages_run(output) == ["train", "evaluate"]


def test_changed_metrics_names_differing_and_missing_figures():
    before = {"accuracy": 0.5, "melanoma_auc": 0.8, "macro_f1": None}
    after = {"accuracy": 0.5, "melanoma_auc": 0.81, "test_images": 10, "macro_f1": None}

    assert changed_metrics(before, after) == ["melanoma_auc", "test_images"]


def test_pin_source_deps_makes_ingest_depend_on_each_source(tmp_path):
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text((PROJECT / "dvc.yaml").read_text())

    pin_source_deps(dvc_yaml, 3)

    def ingest_deps(path):
        deps = yaml.safe_load(path.read_text())["stages"]["ingest"]["deps"]
        by_source = [d for d in deps if d.startswith("${data.sources")]
        return by_source, [d for d in deps if d not in by_source]

    sources, others = ingest_deps(dvc_yaml)
    assert sources == [f"${{data.sources[{i}].path}}" for i in range(3)]
    assert others == ingest_deps(PROJECT / "dvc.yaml")[1]


def test_scaling_rows_give_each_stage_s_growth_from_the_subset_to_all_sources():
    subset = {
        "sources": ["isic_collection"],
        "accepted_images": 2000,
        "stage_seconds": {"ingest": 10.0, "train": 20.0},
        "full_repro_seconds": 30.0,
        "noop_repro_seconds": 2.0,
        "head_only_repro_seconds": 20.0,
    }
    everything = {
        "accepted_images": 10000,
        "stage_seconds": {"ingest": 50.0, "train": 30.0},
        "full_repro_seconds": 80.0,
        "noop_repro_seconds": 3.0,
        "head_only_repro_seconds": 30.0,
    }

    rows = {row["key"]: row for row in scaling_rows(subset, everything)}

    assert {key: row["ours"] for key, row in rows.items()} == {
        "scaling_stage_seconds_ingest": 5.0,
        "scaling_stage_seconds_train": 1.5,
        "scaling_full_repro_seconds": 80 / 30,
        "scaling_noop_repro_seconds": 1.5,
        "scaling_head_only_repro_seconds": 1.5,
    }
    ingest = rows["scaling_stage_seconds_ingest"]["figure"]
    assert "2000 images (isic_collection) -> 10000" in ingest and "10.0 s -> 50.0 s" in ingest


def test_ablation_summary_gives_each_configuration_s_mean_and_spread_over_seeds(
    tmp_path, monkeypatch
):
    from bench import ablation, ablation_runs

    def row(name, seed, auc):
        return {
            "name": name,
            "seed": seed,
            "validation": {"balanced_accuracy": 0.5, "melanoma_auc": auc},
            "validation_melanoma_auc_per_source": {"ham10000": auc},
            "external_report_half": {"balanced_accuracy": 0.6, "melanoma_auc": auc},
            "threshold_rules": {"pooled": {"sensitivity": 0.9, "specificity": 0.6}},
            "train_seconds": 10.0,
            "features_seconds": 1.0,
        }

    rows = [row("frozen", 42, 0.80), row("frozen", 43, 0.84), row("top1", 42, 0.9)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(ablation_runs, "RESULTS", tmp_path)

    table = ablation_runs.summary()

    assert table.loc["frozen", "ext_mel_auc"] == "0.820 ± 0.028"
    assert table.loc["frozen", "seeds"] == 2 and table.loc["top1", "seeds"] == 1
    assert table.loc["frozen", "pooled_spec"] == "0.600 ± 0.000"
    assert ablation.parse_override("train.freeze=3") == ("train.freeze", 3)
    assert ablation.parse_override("train.freeze=all") == ("train.freeze", "all")


@pytest.mark.parametrize("name", ["isic2017", "bcn20000"])
def test_a_tiny_copy_of_a_published_isic_layout_keeps_its_layout(tmp_path, name):
    """The benchmark's tiny sources of ISIC 2017 (a folder and table per split) and ISIC 2019
    (lesion ids in a metadata CSV), from the shared copies: each part keeps one image per label
    and the copy reads back with every file placed."""
    from collections import Counter

    from bench.clinics import four_sources
    from bench.source import tiny_table_source
    from melanoma.data.table_sources import LABEL_TABLE, open_table_source
    from melanoma.params.data import TableSource

    source = TableSource.model_validate(next(s for s in four_sources() if s["name"] == name))
    if not source.path.is_dir():
        pytest.skip(f"{source.path} is not on this machine")

    tiny = tiny_table_source(source, tmp_path / name, per_label=1)

    files = open_table_source(tiny, "data.sources[2]").files
    problems = Counter(f.problem for f in files)
    labels = Counter((f.path.split("/")[0], f.label) for f in files if not f.problem)
    assert set(problems) == {"", LABEL_TABLE}
    assert set(labels.values()) == {1}
    assert len(labels) == {"isic2017": 6, "bcn20000": 8}[name]
    if name == "bcn20000":
        assert all(f.lesion_id.startswith("BCN_") for f in files if not f.problem)
