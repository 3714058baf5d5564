"""The model card of an evaluated model: reports/model_card.md.

`evaluate` writes it from the facts the pipeline recorded (reports/metrics.json, reports/
train_metrics.json, reports/validation.json, models/run.json, the params, the git commit and
the data hashes), never a hand-written number; `register` logs it with the MLflow run and makes
it the registered version's description (MLflow renders Markdown there). Every number goes through
`number` or `with_interval`, so a test can hold each cell against the JSON it came from.
A report file that is absent (no train_metrics.json, no validation.json) is said to be unknown;
the card is still written. A report that is there is complete (melanoma.reports checks it).
"""

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from melanoma.config import Params, flatten
from melanoma.data.manifest import AUGMENTED_COLUMNS, images_per_source, read_manifest
from melanoma.evaluation.report import Lineage
from melanoma.labels import LABELS
from melanoma.reports import (
    HEADLINE_METRICS,
    MetricsReport,
    ReferenceCheck,
    RunInfo,
    SetSection,
    TrainMetrics,
    ValidationReport,
    ValidationSplitMetrics,
)

log = logging.getLogger(__name__)

# The model version description column of MLflow's SQL stores is VARCHAR(5000) (SQLite does not
# enforce it, other databases do): a longer card goes to the registry without its params table.
DESCRIPTION_LIMIT = 5000
# ISIC image ids grow with the archive's age; the ablation found the test split's melanomas and
# nevi all below this id, the training ones mostly above it (bench/ABLATION.md).
OLD_ARCHIVE_IDS_BELOW = 1000
# A class with fewer original images than this in a split has per-class figures that are noise.
FEW_IMAGES = 10
SPLITS = ("train", "val", "test")
METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "melanoma_auc": "melanoma-vs-rest ROC AUC",
    "melanoma_sensitivity": "melanoma sensitivity at the threshold",
    "melanoma_specificity": "melanoma specificity at the threshold",
}
CARD_METRICS = HEADLINE_METRICS
# Rows of the lineage table, after the run and the logged model.
LINEAGE_NAMES = {
    "git_commit": "git commit",
    "test_images_sha256": "test images sha256",
    "augmented_manifest_sha256": "augmented manifest sha256",
}
LIMITATIONS_HEADING = "## Known limitations"
LINEAGE_HEADING = "## Lineage"
ISIC_ID = re.compile(r"ISIC_(\d+)")


@dataclass(frozen=True)
class CardFacts:
    """What the card is written from. Only `report`, `run_info` and `params` are required; a
    fact that is None is unknown."""

    report: MetricsReport  # reports/metrics.json
    run_info: RunInfo  # models/run.json, with the run id the evaluation is logged into
    params: dict[str, object]  # flattened params (melanoma.config.flatten)
    lineage: Lineage | None = None  # git commit, data hashes
    training: TrainMetrics | None = None  # reports/train_metrics.json
    validation: ValidationReport | None = None  # reports/validation.json
    # data/augmented/manifest.csv (source, label, split, source_image_id, augmented)
    images: pd.DataFrame | None = None
    sources: list[dict] = field(default_factory=list)  # data/ingested/sources.json
    model_name: str = ""


@dataclass(frozen=True)
class CardFiles:
    """The files the card's facts beyond the evaluation are read from (the stage names them)."""

    train_metrics: Path  # train's metrics (read if present)
    validation_report: Path  # validate's report (read if present)
    augmented_manifest: Path  # augment's manifest
    sources_summary: Path  # ingest's sources summary (read if readable)


def card_facts(
    params: Params, report: MetricsReport, run_info: RunInfo, lineage: Lineage, files: CardFiles
) -> CardFacts:
    """The facts of the evaluated model, read from the files the pipeline wrote. Raises
    melanoma.reports.ReportError if a report is there but not as its stage writes it."""
    return CardFacts(
        report=report,
        run_info=run_info,
        params=flatten(params),
        lineage=lineage,
        training=TrainMetrics.read_if_present(files.train_metrics),
        validation=ValidationReport.read_if_present(files.validation_report),
        images=read_manifest(files.augmented_manifest, AUGMENTED_COLUMNS),
        sources=read_sources_or_empty(files.sources_summary),
        model_name=params.registry.model_name,
    )


def read_sources_or_empty(path: Path) -> list[dict]:
    """data/ingested/sources.json, or [] (with a warning) if it is absent or unreadable: the
    card then says the sources are unknown instead of failing the stage."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        log.warning("model card: %s not read (%s): its facts are left out", path, error)
        return []


def number(value: object, digits: int = 3) -> str:
    """The one way the card writes a figure: `digits` decimals, ints as they are, None as
    "undefined"."""
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, float):
        return str(value)  # a field of another shape (a newer validate): shown as it is
    return f"{value:.{digits}f}"


def with_interval(section: SetSection, name: str) -> str:
    """`0.530 (0.440–0.640)`: the metric and its bootstrap interval, if the report has one."""
    value, interval = getattr(section, name), section.interval(name)
    if interval is None:
        return number(value)
    low, high = interval
    return f"{number(value)} ({number(low)}–{number(high)})"


TABLE_COLUMNS = ["set", "figure", "value", "ci_low", "ci_high"]


def metrics_table(report: MetricsReport) -> dict[str, list]:
    """Every metric of every evaluation set in reports/metrics.json, one row each: set, metric
    (column `figure`), value, ci_low, ci_high (None where undefined or without an interval), in
    the layout `mlflow.log_table` writes ({"columns": [...], "data": [[...], ...]}). The
    per-class metrics and interval bounds go to MLflow as this one table, not as run metrics."""
    rows = []
    for set_name, section in report.sections():
        content = section.to_dict()
        for name, value in content.items():
            if name.endswith(("_ci_low", "_ci_high")) or isinstance(value, bool):
                continue
            if value is not None and not isinstance(value, int | float):
                continue  # a note
            # No interval: a count, a calibration metric, or bootstrap_samples 0.
            low, high = content.get(f"{name}_ci_low"), content.get(f"{name}_ci_high")
            rows.append([set_name, name, value, low, high])
    return {"columns": TABLE_COLUMNS, "data": rows}


def image_counts(images: pd.DataFrame) -> pd.DataFrame:
    """Original images per label (rows, every label) and split (train, val, test), plus the
    augmented copies added to train."""
    original = images[~images["augmented"].astype(str).str.lower().eq("true")]
    counts = (
        original.groupby(["label", "split"])
        .size()
        .unstack(fill_value=0)
        .reindex(index=list(LABELS), columns=list(SPLITS), fill_value=0)
    )
    copies = images[images["augmented"].astype(str).str.lower().eq("true")]
    counts["train_augmented_copies"] = (
        copies.groupby("label").size().reindex(list(LABELS), fill_value=0)
    )
    return counts.astype(int)


def archive_mix(images: pd.DataFrame) -> pd.DataFrame:
    """Per split, original melanomas and nevi with an ISIC id below OLD_ARCHIVE_IDS_BELOW (the
    oldest archive) and above it: where the test split's mix differs from training's, a network
    can learn the archive instead of the lesion."""
    original = images[~images["augmented"].astype(str).str.lower().eq("true")]
    ids = original["source_image_id"].astype(str).str.extract(ISIC_ID, expand=False)
    old = pd.to_numeric(ids, errors="coerce") < OLD_ARCHIVE_IDS_BELOW
    table = pd.DataFrame(index=list(SPLITS))
    for label in ("melanoma", "nevus"):
        of_label = original["label"] == label
        for column, rows in ((f"{label}_old", of_label & old), (f"{label}_later", of_label & ~old)):
            table[column] = original[rows].groupby("split").size().reindex(SPLITS, fill_value=0)
    return table.astype(int)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def intended_use(facts: CardFacts) -> list[str]:
    params = facts.params
    return [
        "## Intended use",
        "",
        "Decision support for dermatologists: it flags dermoscopic images that may show a "
        "melanoma (**MELANOMA ALERT**) and gives the probability of each of the nine ISIC "
        "diagnoses, so that a specialist looks again. It is **not a diagnosis**, not for use "
        "by patients or without a dermatologist, and not for clinical (non-dermoscopic) "
        "photographs or lesions outside the nine classes.",
        "",
        f"Model: `{params.get('train.architecture', 'unknown')}` architecture, "
        f"{number(facts.run_info.image_size)} px RGB input, nine softmax probabilities "
        f"({', '.join(LABELS)}).",
    ]


def data_sources(facts: CardFacts) -> list[str]:
    """Each data source: what it is, its content hash, and the images it gave each split."""
    if not facts.sources:
        return ["Data sources: unknown (data/ingested/sources.json was not available)."]
    used = (
        images_per_source(facts.images).groupby(level="source").sum()
        if facts.images is not None
        else pd.DataFrame()
    )
    rows = []
    for source in facts.sources:
        counts = used.loc[source["name"]] if source["name"] in used.index else None
        rows.append(
            [
                f"`{source['name']}`",
                f"{source['kind']}: `{source['path']}`",
                f"`{source['sha256'][:12]}`",
                f"{number(source['files'])} / {number(source['accepted'])}",
                *(
                    ["unknown"] * 4
                    if counts is None
                    else [number(int(counts[c])) for c in (*SPLITS, "train_augmented_copies")]
                ),
            ]
        )
    return _table(
        [
            "source",
            "where",
            "content sha256",
            "files / accepted",
            "train",
            "validation",
            "test",
            "augmented copies",
        ],
        rows,
    )


def training_data(facts: CardFacts) -> list[str]:
    lines = [
        "## Training data",
        "",
        "Every source of `data.sources`, with the images each gave after validate's decisions "
        "(one copy per ISIC id, no lesion on both sides of a split). The augment stage split "
        "the training images into train and validation, whole lesions at a time, and added "
        "augmented copies to the classes below `augment.target_per_class`; the sources' test "
        "folders are the test split.",
        "",
        *data_sources(facts),
        "",
    ]
    if facts.images is None:
        lines.append("Image counts per class: unknown (no augmented manifest).")
    else:
        counts = image_counts(facts.images)
        lines += _table(
            ["class", "train", "validation", "test", "augmented copies in train"],
            [
                [label, *(number(int(v)) for v in row)]
                for label, row in zip(counts.index, counts.to_numpy(), strict=True)
            ],
        )
    return [*lines, "", *validation_findings(facts.validation)]


def reference_label_findings(reference: ReferenceCheck) -> list[str]:
    """The check of folder labels against ISIC's ground truth: agreement, and each kind of
    disagreement with what was done about it. Nothing when the check was off."""
    if reference.file is None or reference.images is None:
        return []
    lines = [
        "- Folder labels checked against ISIC's ground truth (`validate.reference_labels`): "
        + ", ".join(f"{k.replace('_', ' ')} {number(v)}" for k, v in reference.images.items())
        + "."
    ]
    for pair in reference.disagreement_pairs or []:
        actions = ", ".join(f"{k.replace('_', ' ')} {number(v)}" for k, v in pair.actions.items())
        lines.append(
            f"  - folder `{pair.folder_label}`, ISIC says {pair.reference_class} "
            f"({pair.reference_label}): {number(pair.images)} images ({actions})."
        )
    return lines


def grouping_findings(validation: ValidationReport) -> list[str]:
    """One image, one copy; lesions kept on one side of the test split."""
    findings = [
        (
            validation.same_image_copies.count,
            "images found in more than one source (one copy kept of each, the others removed)",
        ),
        (
            validation.near_duplicates.count,
            "near-duplicate pairs by perceptual hash (kept, grouped)",
        ),
        (
            validation.same_group_as_test.count,
            "training images removed as images of a lesion (or copies of a picture) in the test "
            "split",
        ),
    ]
    return [f"- {number(count)} {what}." for count, what in findings]


def validation_findings(validation: ValidationReport | None) -> list[str]:
    """What validate dropped or relabelled and why, from reports/validation.json."""
    lines = ["### What validate removed or changed", ""]
    if validation is None:
        return [*lines, "Unknown: reports/validation.json was not available."]
    policy = validation.policy.to_dict()
    lines.append("- Policy: " + ", ".join(f"{k} `{v}`" for k, v in policy.items()) + ".")
    groups = [
        f"{len(found)} {what}"
        for found, what in (
            (
                validation.label_conflicts,
                "label-conflict groups (the same pixels under two labels)",
            ),
            (validation.leaks, "leak groups (a test image also in train)"),
            (validation.duplicates, "within-label duplicate groups"),
        )
    ]
    lines.append("- Found: " + ", ".join(groups) + ".")
    if validation.decisions:
        lines.append(
            "- Decisions per image: "
            + ", ".join(f"{k} {number(v)}" for k, v in sorted(validation.decisions.items()))
            + "."
        )
    lines += reference_label_findings(validation.reference_labels)
    lines += grouping_findings(validation)
    thin = validation.too_few_training_images
    if thin.labels:
        lines.append(
            f"- Classes with fewer than {number(thin.threshold)} training images: "
            + ", ".join(f"{label} {number(n)}" for label, n in sorted(thin.labels.items()))
            + "."
        )
    # A field of a newer validate that this card does not know: listed, never hidden.
    for key, value in sorted((validation.model_extra or {}).items()):
        if isinstance(value, list | dict):
            lines.append(f"- `{key}`: {number(len(value))} entries (see reports/validation.json)")
    for failure in validation.failures:
        lines.append(f"- failure: {failure}")
    if validation.removed:
        lines += [
            "",
            "Images removed, by reason:",
            "",
            *_table(["reason", "images"], [[k, number(v)] for k, v in validation.removed.items()]),
        ]
    return lines


def evaluation(report: MetricsReport, training: TrainMetrics | None) -> list[str]:
    """Every evaluation set as a column, every headline metric as a row, with intervals."""
    sections = report.sections()
    header = ["figure", *(name for name, _ in sections)]
    rows = [
        ["images", *(number(s.images) for _, s in sections)],
        ["melanomas", *(number(s.melanomas) for _, s in sections)],
        *(
            [METRIC_NAMES[name], *(with_interval(s, name) for _, s in sections)]
            for name in CARD_METRICS
        ),
    ]
    lines = [
        "## Evaluation",
        "",
        f"Figures with their 95% bootstrap intervals ({number(report.bootstrap_samples)} "
        "samples). An external set that chose the alert threshold reports on its other half "
        "only.",
        "",
        *_table(header, rows),
    ]
    if training is not None:
        validation = training.validation
        lines += [
            "",
            "On the validation split (train's own held-out part, no intervals): "
            + ", ".join(
                f"{METRIC_NAMES[name]} {number(getattr(validation, name))}"
                for name in CARD_METRICS
                if name in ValidationSplitMetrics.model_fields
            )
            + ".",
            *per_source_validation(training),
        ]
    return lines


def per_source_validation(training: TrainMetrics) -> list[str]:
    """Each source's validation figures: a clinic swamped by a larger one stays visible."""
    if len(training.validation_per_source) < 2:
        return []
    rows = [
        [
            source,
            number(f.images),
            number(f.melanomas),
            number(f.melanoma_auc),
            number(f.balanced_accuracy),
        ]
        for source, f in training.validation_per_source.items()
    ]
    header = ["source", "images", "melanomas", "melanoma AUC", "balanced accuracy"]
    return ["", "Per source, on the validation split:", "", *_table(header, rows)]


def alert(report: MetricsReport) -> list[str]:
    point = report.operating_point
    lines = [
        "## Melanoma alert",
        "",
        f"**MELANOMA ALERT** when P(melanoma) >= {number(point.threshold, 4)}, chosen by the "
        f"rule `{point.rule}` on {point.chosen_on}: the highest threshold whose lower "
        f"confidence bound of sensitivity reaches {number(point.target_sensitivity)} at confidence "
        f"{number(point.confidence)} ({number(point.caught)} of "
        f"{number(point.melanomas)} melanomas caught there, lower bound "
        f"{number(point.sensitivity_lower_bound)}; target reachable: "
        f"{number(point.target_reachable)}).",
        "",
    ]
    rows = [
        [
            name,
            number(s.melanomas),
            with_interval(s, "melanoma_sensitivity"),
            with_interval(s, "melanoma_specificity"),
            "n/a" if s.alert_below_target is None else number(s.alert_below_target),
        ]
        for name, s in report.sections()
    ]
    lines += _table(["set", "melanomas", "sensitivity", "specificity", "below target"], rows)
    return lines + rules_delivered(report)


def rules_delivered(report: MetricsReport) -> list[str]:
    """What each rule's threshold delivered on the reporting half of each external set: the
    evidence for the rule this model uses."""
    rows = [
        [
            f"`{rule}`" + (" (this model's)" if rule == report.operating_point.rule else ""),
            number(result.threshold, 4),
            name,
            number(half.sensitivity),
            number(half.specificity),
        ]
        for rule, result in report.threshold_rules.items()
        for name, half in result.reporting_halves.items()
    ]
    if not rows:
        return []
    header = ["rule", "threshold", "reporting half of", "sensitivity", "specificity"]
    return [
        "",
        "Every rule's threshold on the images none of them chose on:",
        "",
        *_table(header, rows),
    ]


def calibration(report: MetricsReport, training: TrainMetrics | None) -> list[str]:
    lines = [
        "## Calibration",
        "",
        f"Temperature {number(report.temperature)} (fitted on the validation split and "
        "folded into the model; a temperature of one means uncalibrated). Expected "
        "calibration error (ECE) and Brier score before and after:",
        "",
    ]
    rows = []
    if training is not None:
        fitted = training.calibration
        rows.append(
            [
                "validation",
                number(fitted.validation_ece_uncalibrated),
                number(fitted.validation_ece),
                number(fitted.validation_brier_uncalibrated),
                number(fitted.validation_brier),
            ]
        )
    for name, s in report.sections():
        # An uncalibrated model has no separate "before": before is after.
        ece_before = s.ece if s.ece_uncalibrated is None else s.ece_uncalibrated
        brier_before = s.brier if s.brier_uncalibrated is None else s.brier_uncalibrated
        rows.append(
            [name, number(ece_before), number(s.ece), number(brier_before), number(s.brier)]
        )
    return lines + _table(["set", "ECE before", "ECE after", "Brier before", "Brier after"], rows)


def limitations(facts: CardFacts) -> list[str]:
    report, lines = facts.report, [LIMITATIONS_HEADING, ""]
    test = report.test
    shift = (
        "- **Archive shift.** ISIC image ids grow with the archive's age; where the test "
        "split's melanomas and nevi come from another archive than the training ones, the "
        "network can learn the archive instead of the lesion, and validation figures "
        "overstate the test figures (bench/ABLATION.md)."
    )
    if facts.training is not None:
        validation = facts.training.validation
        shift += (
            f" Melanoma AUC: validation {number(validation.melanoma_auc)}, test "
            f"{with_interval(test, 'melanoma_auc')}; accuracy: validation "
            f"{number(validation.accuracy)}, test {with_interval(test, 'accuracy')}."
        )
    lines.append(shift)
    if facts.images is not None:
        mix = archive_mix(facts.images)
        lines += [
            "",
            f"  Original melanomas and nevi by ISIC id (below {OLD_ARCHIVE_IDS_BELOW}: the "
            "oldest archive):",
            "",
            *(
                "  " + line
                for line in _table(
                    ["split", "melanoma, old", "melanoma, later", "nevus, old", "nevus, later"],
                    [[split, *(number(int(v)) for v in row)] for split, row in mix.iterrows()],
                )
            ),
            "",
        ]
        counts = image_counts(facts.images)[list(SPLITS)]
        few = [
            f"{label} ("
            + ", ".join(f"{split} {number(int(n))}" for split, n in row.items() if n < FEW_IMAGES)
            + ")"
            for label, row in counts.iterrows()
            if (row < FEW_IMAGES).any()
        ]
        if few:
            lines.append(
                f"- **Classes with too few images** (fewer than {FEW_IMAGES} originals in a "
                "split; their per-class figures are noise and the model has seen little of "
                "them): " + "; ".join(few) + "."
            )
    for name, s in report.sections():
        if s.melanomas == 0:
            lines.append(f"- {name}: {s.note}.")
    point = report.operating_point
    if not point.target_reachable:
        lines.append(
            f"- The {number(point.melanomas)} melanomas the threshold was chosen on are too "
            f"few to show sensitivity >= {number(point.target_sensitivity)}: the threshold "
            "catches all of them."
        )
    lines += [f"- Warning: {warning}" for warning in report.warnings]
    return lines


def lineage(facts: CardFacts, with_params: bool) -> list[str]:
    lineage = asdict(facts.lineage) if facts.lineage is not None else {}
    rows = [
        ["MLflow run", f"`{facts.run_info.run_id}`"],
        ["logged model", f"`{facts.run_info.model_uri}`"],
        *([LINEAGE_NAMES[name], f"`{value}`"] for name, value in lineage.items()),
    ]
    lines = [LINEAGE_HEADING, "", *_table(["what", "value"], rows), ""]
    if with_params:
        lines += [
            "Params (params.yaml):",
            "",
            *_table(["param", "value"], [[k, f"`{v}`"] for k, v in facts.params.items()]),
        ]
    else:
        lines.append(
            "Params: the MLflow run's params; the whole card is the run's artifact "
            "`evaluation/model_card.md`."
        )
    return lines


def card_parts(facts: CardFacts, *, with_params: bool = True) -> dict[str, list[str]]:
    """The card's sections, in order, each a list of Markdown lines."""
    return {
        "title": [
            f"# Model card: {facts.model_name or 'melanoma classifier'}",
            "",
            f"MLflow run `{facts.run_info.run_id}`.",
        ],
        "intended_use": intended_use(facts),
        "training_data": training_data(facts),
        "evaluation": evaluation(facts.report, facts.training),
        "alert": alert(facts.report),
        "calibration": calibration(facts.report, facts.training),
        "limitations": limitations(facts),
        "lineage": lineage(facts, with_params),
    }


def _join(parts: dict[str, list[str]]) -> str:
    return "\n\n".join("\n".join(lines) for lines in parts.values()) + "\n"


def render_card(facts: CardFacts, *, with_params: bool = True) -> str:
    """reports/model_card.md: Markdown, every figure from `facts`."""
    return _join(card_parts(facts, with_params=with_params))


# Sections the registry's copy loses first when the card is over its limit, each down to its
# heading and a pointer to the whole card.
SHORTENED_FIRST = ("training_data", "calibration", "limitations", "alert", "evaluation")


def registry_description(facts: CardFacts, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card for the registered version's description, within `limit` characters: whole if
    it fits; else without its params table (the run has them); else with the sections of
    SHORTENED_FIRST, in that order, cut to their heading and a pointer to the whole card (the
    run's artifact evaluation/model_card.md)."""
    card = render_card(facts)
    if len(card) <= limit:
        return card
    parts = card_parts(facts, with_params=False)
    pointer = (
        "Left out here for the registry's size limit: see the whole card, the artifact "
        f"`evaluation/model_card.md` of run `{facts.run_info.run_id}`."
    )
    for name in SHORTENED_FIRST:
        if len(_join(parts)) <= limit:
            break
        parts[name] = [parts[name][0], "", pointer]
    description = _join(parts)
    if len(description) > limit:
        log.warning("the model card is %d characters even shortened", len(description))
    return description
