"""The model card: every figure comes from the facts (reports/metrics.json first of all), a
missing fact is said to be missing, and the registry gets a card that fits its column."""

import copy
import json
import re
from functools import cache

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from melanoma.config import flatten, parse_params
from melanoma.data.manifest import AUGMENTED_COLUMNS, images_per_source, read_manifest
from melanoma.evaluation.card_data import OLD_ARCHIVE_IDS_BELOW
from melanoma.evaluation.card_facts import CardFacts
from melanoma.evaluation.model_card import (
    CARD_METRICS,
    DESCRIPTION_LIMIT,
    FEW_IMAGES,
    LIMITATIONS_HEADING,
    LINEAGE_HEADING,
    METRIC_NAMES,
    metrics_table,
    registry_description,
    render_card,
)
from melanoma.evaluation.operating_point import choose_threshold
from melanoma.evaluation.report import (
    EvaluationSet,
    Lineage,
    OperatingPointChoice,
    set_section,
    threshold_rules,
)
from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.params.evaluation import OperatingPoint
from melanoma.reports import (
    MetricsReport,
    RunInfo,
    Section,
    TrainMetrics,
    ValidationReport,
)

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")
CELL = re.compile(r"^(\S+)(?: \((\S+)–(\S+)\))?$")


def _report() -> MetricsReport:
    return copy.deepcopy(_made_up_report())


@cache
def _made_up_report(seed: int = 0) -> MetricsReport:
    """reports/metrics.json as evaluation_report writes it, from made-up probabilities: the
    test split (every class) and one external set (three classes, so some figures undefined),
    calibrated with temperature 1.3."""
    rng = np.random.default_rng(seed)
    params = OperatingPoint(choose_on="validation")
    chooser_true = np.repeat(np.arange(len(LABELS)), 6)
    chooser = rng.dirichlet(np.ones(len(LABELS)), len(chooser_true))
    threshold = choose_threshold(chooser_true, chooser, 0.85, 0.95)
    choice = OperatingPointChoice(threshold, "the validation split (54 images)", {})
    sections, evaluation_sets, set_probabilities = {}, [], {}
    for name, labels in (("test", np.arange(len(LABELS))), ("ext2018", np.array([3, 4, 1]))):
        label_indices = np.repeat(labels, 5)
        probabilities = rng.dirichlet(np.ones(len(LABELS)) * 0.5, len(label_indices))
        probabilities[label_indices == MELANOMA_INDEX, MELANOMA_INDEX] += 0.5
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        images = EvaluationSet(
            name, [f"{i}.png" for i in range(len(label_indices))], [], label_indices
        )
        sections[name] = set_section(images, probabilities, threshold.value, 1.3, params, 30, seed)
        evaluation_sets.append(images)
        set_probabilities[name] = probabilities
    rules = threshold_rules(
        params, seed, (chooser_true, chooser), evaluation_sets, set_probabilities
    )
    report = MetricsReport(
        operating_point=choice.describe(params),
        temperature=1.3,
        bootstrap_samples=30,
        test=sections.pop("test"),
        external=sections,
        warnings=["test: a made-up warning with 1 figure 0.123"],
        threshold_rules=rules,
    )
    # As read back from the file: no numpy types.
    return MetricsReport.model_validate(json.loads(json.dumps(report.to_dict())))


def _validation(**changes) -> ValidationReport:
    """reports/validation.json of a validate run without the reference check, with `changes`."""
    report = {
        "success": True,
        "failures": [],
        "policy": {
            "on_label_conflict": "drop",
            "on_leak": "drop_from_train",
            "on_duplicate": "keep_first",
            "on_reference_disagreement": "relabel",
        },
        "expectations": [],
        "class_counts": {"accepted": {}, "used": {}},
        "too_few_training_images": {"threshold": 20, "labels": {}},
        "reference_labels": {"file": None},
        "label_conflicts": [{}, {}],
        "leaks": [{}],
        "duplicates": [],
        "sources": {},
        "same_image_copies": {"count": 0, "examples": []},
        "near_duplicates": {"max_distance": 0, "count": 0, "pairs": []},
        "same_group_as_test": {"count": 0, "files": []},
        "decisions": {"use": 2045, "drop": 316},
        "removed": {"duplicate": 4, "label_conflict": 310},
    }
    return ValidationReport.model_validate(report | changes)


def _training() -> TrainMetrics:
    epoch = {"loss": 0.91, "accuracy": 0.67, "val_loss": 1.02, "val_accuracy": 0.68}
    return TrainMetrics(
        epochs_run=20,
        final=epoch,
        best_epoch=20,
        best=epoch,
        saved_model_epoch=20,
        train_images=180,
        first_epoch_seconds=2.5,
        seconds_per_epoch=2.25,
        images_per_second=80.0,
        training_seconds=45.25,
        calibration={
            "temperature": 1.3,
            "validation_ece_uncalibrated": 0.09,
            "validation_brier_uncalibrated": 0.45,
            "validation_ece": 0.04,
            "validation_brier": 0.41,
        },
        validation={
            "accuracy": 0.68,
            "balanced_accuracy": 0.59,
            "macro_f1": 0.52,
            "melanoma_auc": 0.94,
        },
        validation_per_source={
            "isic": {"images": 30, "melanomas": 6, "melanoma_auc": 0.97, "balanced_accuracy": 0.61},
            "bcn": {"images": 24, "melanomas": 0, "melanoma_auc": None, "balanced_accuracy": 0.55},
        },
    )


def _images() -> pd.DataFrame:
    """An augmented manifest: per label 20 train / 5 val / 4 test originals, ids from the old
    archive for the test melanomas and nevi only, and 3 augmented copies per label in train."""
    rows = []
    n = 5000
    for label in LABELS:
        for split, count in (("train", 20), ("val", 5), ("test", 4)):
            for _ in range(count):
                old = split == "test" and label in ("melanoma", "nevus")
                image_id = f"ISIC_{(n % 900) if old else n:07d}"
                rows.append((label, split, image_id, False))
                n += 1
        rows += [(label, "train", f"ISIC_{n:07d}", True)] * 3
    return pd.DataFrame(rows, columns=["label", "split", "source_image_id", "augmented"])


def _facts(**changes) -> CardFacts:
    facts = {
        "report": _report(),
        "run_info": RunInfo(
            run_id="a" * 32,
            experiment_id="1",
            model_uri="models:/m-1",
            tracking_uri="sqlite:///mlruns/mlflow.db",
            labels=list(LABELS),
            image_size=64,
            temperature=1.3,
        ),
        "params": {"train.architecture": "resnet", "train.epochs": 20},
        "lineage": Lineage(
            git_commit="c" * 40, test_images_sha256="d" * 64, augmented_manifest_sha256="e" * 64
        ),
        "training": _training(),
        "validation": _validation(),
        "images": _images(),
        "model_name": "melanoma-cnn",
    }
    return CardFacts(**(facts | changes))


def _section(card: str, heading: str) -> str:
    start = card.index(heading)
    end = card.find("\n## ", start + 1)
    return card[start : end if end >= 0 else None]


def _tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table in text, in order: (header, rows of cells)."""
    tables, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            lines.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif lines:
            tables.append((lines[0], lines[2:]))
            lines = []
    return tables


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    """The first Markdown table in text."""
    return _tables(text)[0]


def _assert_cell(cell: str, section: dict, name: str) -> None:
    """A card cell `v (low–high)` holds the report's figure and interval, to its 3 decimals."""
    value, low, high = CELL.match(cell).groups()
    for shown, key in ((value, name), (low, f"{name}_ci_low"), (high, f"{name}_ci_high")):
        if shown is None:
            assert section.get(key) is None, (cell, key)
        elif shown == "undefined":
            assert section[key] is None, (cell, key)
        else:
            assert float(shown) == pytest.approx(section[key], abs=5e-4), (cell, key)


def assert_tables_match_report(card: str, report: MetricsReport) -> None:
    """Every cell of the card's evaluation, alert and calibration tables holds the figure of
    reports/metrics.json for its set (column or row) and figure (row or column)."""
    sections = {name: section.to_dict() for name, section in report.sections()}

    header, rows = _table(_section(card, "## Evaluation"))
    assert header[1:] == list(sections)
    by_name = {row[0]: row[1:] for row in rows}
    assert set(by_name) == {"images", "melanomas", *(METRIC_NAMES[f] for f in CARD_METRICS)}
    for column, set_name in enumerate(header[1:]):
        section = sections[set_name]
        assert int(by_name["images"][column]) == section["images"]
        assert int(by_name["melanomas"][column]) == section["melanomas"]
        for figure in CARD_METRICS:
            _assert_cell(by_name[METRIC_NAMES[figure]][column], section, figure)

    alert = _section(card, "## Melanoma alert")
    assert f"P(melanoma) >= {report.operating_point.threshold:.4f}" in alert
    header, rows = _table(alert)
    assert header == ["set", "melanomas", "sensitivity", "specificity", "below target"]
    assert [row[0] for row in rows] == list(sections)
    for set_name, melanomas, sensitivity, specificity, below in rows:
        section = sections[set_name]
        assert int(melanomas) == section["melanomas"]
        _assert_cell(sensitivity, section, "melanoma_sensitivity")
        _assert_cell(specificity, section, "melanoma_specificity")
        assert below == ("yes" if section["alert_below_target"] else "no")
    # What every threshold rule delivered on each reporting half, the model's own rule marked.
    header, rows = _tables(alert)[1]
    assert header == ["rule", "threshold", "reporting half of", "sensitivity", "specificity"]
    delivered = [
        (rule, result.threshold, name, half)
        for rule, result in report.threshold_rules.items()
        for name, half in result.reporting_halves.items()
    ]
    assert len(rows) == len(delivered) > 0
    for row, (rule, threshold, name, half) in zip(rows, delivered, strict=True):
        own = rule == report.operating_point.rule
        assert row[0] == f"`{rule}`" + (" (this model's)" if own else "")
        assert float(row[1]) == pytest.approx(threshold, abs=5e-5)
        assert row[2] == name
        assert [float(row[3]), float(row[4])] == pytest.approx(
            [half.sensitivity, half.specificity], abs=5e-4
        )

    _, rows = _table(_section(card, "## Calibration"))
    calibrated = [row for row in rows if row[0] in sections]
    assert [row[0] for row in calibrated] == list(sections)
    for set_name, *shown in calibrated:
        section = sections[set_name]
        keys = ("ece_uncalibrated", "ece", "brier_uncalibrated", "brier")
        expected = [section.get(k, section[k.removesuffix("_uncalibrated")]) for k in keys]
        assert [float(v) for v in shown] == pytest.approx(expected, abs=5e-4)
    assert f"Temperature {report.temperature:.3f}" in card


def test_every_figure_of_the_evaluation_alert_and_calibration_tables_is_the_reports():
    facts = _facts()
    card = render_card(facts)
    assert_tables_match_report(card, facts.report)
    # The external set has three classes: its macro figures exist, some per-class ones do not.
    assert facts.report.external["ext2018"].seborrheic_keratosis_recall is None
    _, rows = _table(_section(card, "## Calibration"))
    assert rows[0] == ["validation", "0.090", "0.040", "0.450", "0.410"]


def _fact_numbers(value: object, found: set[float]) -> None:
    """Every number in a JSON-like fact: numeric leaves, and numbers written in strings and
    keys (a warning's figures, `ext2018`)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _fact_numbers(key, found)
            _fact_numbers(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _fact_numbers(item, found)
    elif isinstance(value, Section):
        _fact_numbers(value.to_dict(), found)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float | np.integer | np.floating):
        found.add(float(value))
    elif isinstance(value, str):
        found.update(float(n) for n in NUMBER.findall(value))


def assert_every_number_is_a_fact(card: str, facts: CardFacts) -> None:
    """Every number in the card before its lineage (which is hashes and params) is, to the
    decimals shown, a number of the facts, a count of the manifest, or one of the card's two
    cut-offs: no hand-written figure."""
    known: set[float] = set()
    facts_read = (facts.report, facts.training, facts.validation, facts.run_info, facts.params)
    for fact in (*facts_read, facts.sources):
        _fact_numbers(fact, known)
    if facts.images is not None:
        augmented = facts.images["augmented"].astype(str).str.lower() == "true"
        counts = facts.images[~augmented].groupby(["label", "split"]).size().tolist()
        counts += facts.images[augmented].groupby("label").size().tolist()
        if facts.sources:
            per_source = images_per_source(facts.images).groupby(level="source").sum()
            counts += per_source.stack().tolist()
        _fact_numbers(counts, known)
    validation = facts.validation.to_dict() if facts.validation is not None else {}
    _fact_numbers([len(v) for v in validation.values() if isinstance(v, list)], known)
    known |= {0.0, float(OLD_ARCHIVE_IDS_BELOW), float(FEW_IMAGES)}
    known.add(
        95.0
    )  # "95% bootstrap intervals": melanoma.evaluation.metrics' confidence, as a percentage

    body = card[: card.index(LINEAGE_HEADING)]
    for shown in NUMBER.findall(body):
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        tolerance = 0.5 * 10**-decimals + 1e-12
        assert any(abs(float(shown) - fact) <= tolerance for fact in known), shown


def test_every_number_in_the_card_is_a_fact_not_a_hand_written_one():
    facts = _facts()
    assert_every_number_is_a_fact(render_card(facts), facts)
    # The check bites: a number the facts do not hold is caught.
    with pytest.raises(AssertionError, match="0.777"):
        planted = render_card(facts).replace(
            LIMITATIONS_HEADING, f"about 0.777 better\n\n{LIMITATIONS_HEADING}"
        )
        assert_every_number_is_a_fact(planted, facts)


def test_the_card_shows_validate_findings_archive_mix_and_thin_classes():
    facts = _facts(
        validation=_validation(
            label_references=[{"image_id": "ISIC_1"}] * 3, decisions={"relabel": 7}
        )
    )
    card = render_card(facts)
    assert "2 label-conflict groups" in card and "1 leak groups" in card
    assert "| label_conflict | 310 |" in card
    assert "relabel 7" in card
    # A field a newer validate adds is listed, not dropped.
    assert "`label_references`: 3 entries" in card
    header, rows = _table(_section(card, "## Known limitations"))
    assert header[0] == "split"
    assert {row[0]: row[1:] for row in rows}["test"] == ["4", "0", "4", "0"]
    assert {row[0]: row[1:] for row in rows}["train"] == ["0", "20", "0", "20"]
    # Validation melanoma AUC against the test one: the gap the archive shift makes.
    assert "Melanoma AUC: validation 0.940, test " in card
    assert "Classes with too few images" in card and "actinic_keratosis (val 5, test 4)" in card
    assert "- Warning: test: a made-up warning" in card
    _, rows = _table(_section(card, "## Training data"))
    assert ["melanoma", "20", "5", "4", "3"] in rows


def test_missing_facts_are_said_to_be_missing_and_the_card_still_renders():
    card = render_card(_facts(training=None, validation=None, images=None, lineage=None))
    assert "Unknown: reports/validation.json was not available." in card
    assert "Image counts per class: unknown" in card
    assert "## Evaluation" in card and "Classes with too few images" not in card
    assert "| validation |" not in card  # no calibration row without train_metrics.json


def test_the_registry_gets_the_whole_card_or_one_without_its_params():
    params = {f"train.knob_{i}": i for i in range(300)}
    facts = _facts(params=params)
    whole = render_card(facts)
    assert registry_description(facts, limit=len(whole)) == whole
    short = registry_description(facts, limit=len(whole) - 1)
    assert "train.knob_299" not in short and "evaluation/model_card.md" in short
    assert short.split(LINEAGE_HEADING)[0] == whole.split(LINEAGE_HEADING)[0]
    # Tighter still: the training data section goes first, down to its heading and a pointer;
    # the evaluation figures stay.
    shorter = registry_description(facts, limit=len(short) - 1)
    assert len(shorter) <= len(short) - 1
    assert "| melanoma | 20 |" in whole and "| melanoma | 20 |" not in shorter
    assert "## Training data\n\nLeft out here for the registry's size limit" in shorter
    assert _section(shorter, "## Evaluation") == _section(whole, "## Evaluation")


def test_the_figures_table_holds_every_figure_with_its_interval():
    report = _report()
    table = metrics_table(report)
    # Strict JSON (no NaN): undefined figures stay null, as in reports/metrics.json.
    assert json.loads(json.dumps(table, allow_nan=False)) == table
    rows = {(r[0], r[1]): r[2:] for r in table["data"]}
    assert table["columns"] == ["set", "figure", "value", "ci_low", "ci_high"]
    for set_name, section in report.sections():
        section = section.to_dict()
        figures = [
            k
            for k, v in section.items()
            if not k.endswith(("_ci_low", "_ci_high")) and not isinstance(v, bool | str)
        ]
        assert sorted(f for s, f in rows if s == set_name) == sorted(figures)
        for name in figures:
            low, high = section.get(f"{name}_ci_low"), section.get(f"{name}_ci_high")
            assert rows[(set_name, name)] == [section[name], low, high]
    assert rows[("ext2018", "seborrheic_keratosis_recall")] == [None, None, None]
    assert {"melanoma_recall", "ece_uncalibrated", "images"} <= {f for _, f in rows}


@pytest.mark.slow  # the whole pipeline, `dvc repro`, once per session
def test_one_pipeline_run_holds_at_most_25_metrics_and_the_card_of_its_facts(pipeline_repo):
    """`dvc repro` on tiny data: train and evaluate log into one run, which keeps to the curves
    and the headline figures; the card is a declared output, written from the run's reports,
    and the registered version's description."""
    root = pipeline_repo.root
    run_info = RunInfo.read(root / "models/run.json")
    report = MetricsReport.read(root / "reports/metrics.json")
    client = MlflowClient(pipeline_repo.tracking_uri)
    run = client.get_run(run_info.run_id)

    assert len(run.data.metrics) <= 25, sorted(run.data.metrics)
    assert {"val_loss", "val_accuracy", "learning_rate", "test_melanoma_auc"} <= set(
        run.data.metrics
    )
    assert run.data.metrics["test_accuracy"] == report.test.accuracy

    card = (root / "reports/model_card.md").read_text()
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["evaluate"]
    assert {"reports/model_card.md": {"cache": False}} in stage["outs"]
    assert f"MLflow run `{run.info.run_id}`" in card
    # Facts of the other stages: validate's decisions and train's validation figures.
    validation = ValidationReport.read(root / "reports/validation.json")
    assert (
        "Decisions per image: "
        + ", ".join(f"{k} {v}" for k, v in sorted(validation.decisions.items()))
        in card
    )
    training = TrainMetrics.read(root / "reports/train_metrics.json")
    assert f"Melanoma AUC: validation {training.validation.melanoma_auc:.3f}" in card
    # Every figure the card shows is the report's, every number a fact of the pipeline.
    assert_tables_match_report(card, report)
    facts = CardFacts(
        report=report,
        run_info=run_info,
        params=flatten(parse_params(yaml.safe_load((root / "params.yaml").read_text()))),
        training=training,
        validation=validation,
        images=read_manifest(root / "data/augmented/manifest.csv", AUGMENTED_COLUMNS),
        sources=json.loads((root / "data/ingested/sources.json").read_text()),
    )
    assert_every_number_is_a_fact(card, facts)
    version = client.search_model_versions(f"run_id='{run.info.run_id}'")[0]
    assert len(version.description) <= DESCRIPTION_LIMIT
    assert version.description.split("## Training data")[0] == card.split("## Training data")[0]
    assert "## Evaluation" in version.description


def test_training_data_gives_each_source_its_hash_and_images_per_split():
    images = _images()
    images["source"] = np.where(np.arange(len(images)) % 3 == 0, "ham", "isic")
    sources = [
        {
            "name": name,
            "kind": kind,
            "path": f"/data/{name}",
            "sha256": digit * 64,
            "files": 99,
            "accepted": 98,
            "rejected": {"not_in_table": 1},
        }
        for name, kind, digit in (("isic", "folders", "1"), ("ham", "table", "2"))
    ]
    card = render_card(_facts(images=images, sources=sources))

    # The sources table, before the per-class one.
    header, rows = _table(_section(card, "## Training data").split("| class |")[0])
    assert header[:4] == ["source", "where", "content sha256", "files / accepted"]
    assert [row[:4] for row in rows] == [
        ["`isic`", "folders: `/data/isic`", f"`{'1' * 12}`", "99 / 98"],
        ["`ham`", "table: `/data/ham`", f"`{'2' * 12}`", "99 / 98"],
    ]
    originals = images[~images["augmented"]]
    for row in rows:
        name = row[0].strip("`")
        of_source = originals[originals["source"] == name]
        expected = [int((of_source["split"] == split).sum()) for split in ("train", "val", "test")]
        copies = int((images["augmented"] & (images["source"] == name)).sum())
        assert [int(v) for v in row[4:]] == [*expected, copies]


def test_training_data_says_when_the_sources_are_unknown():
    card = render_card(_facts())
    assert "Data sources: unknown" in _section(card, "## Training data")


def test_the_card_shows_each_source_s_validation_figures():
    card = render_card(_facts())
    header, rows = _table(_section(card, "## Evaluation").split("Per source")[1])
    assert header == ["source", "images", "melanomas", "melanoma AUC", "balanced accuracy"]
    assert rows == [["isic", "30", "6", "0.970", "0.610"], ["bcn", "24", "0", "undefined", "0.550"]]
