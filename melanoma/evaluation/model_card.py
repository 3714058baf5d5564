"""The model card of an evaluated model: reports/model_card.md.

`evaluate` writes it from the facts the pipeline recorded (reports/metrics.json, reports/
train_metrics.json, reports/validation.json, models/run.json, the params, the git commit and
the data hashes), never a hand-written number; `register` logs it with the MLflow run and makes
it the registered version's description (MLflow renders Markdown there). Every number goes through
`number` or `with_interval` (card_format), so a test can hold each cell against the JSON it came
from. Its data sections are in card_data, the facts it is written from in card_facts.
A report file that is absent (no train_metrics.json, no validation.json) is said to be unknown;
the card is still written. A report that is there is complete (melanoma.reports checks it).
"""

import logging
from dataclasses import asdict

from melanoma.evaluation.card_data import (
    OLD_ARCHIVE_IDS_BELOW,
    SPLITS,
    archive_mix,
    image_counts,
    training_data,
)
from melanoma.evaluation.card_facts import CardFacts
from melanoma.evaluation.card_format import markdown_table, number, with_interval
from melanoma.labels import LABELS
from melanoma.reports import (
    HEADLINE_METRICS,
    MetricsReport,
    TrainMetrics,
    ValidationSplitMetrics,
)

log = logging.getLogger(__name__)

# The model version description column of MLflow's SQL stores is VARCHAR(5000) (SQLite does not
# enforce it, other databases do): a longer card goes to the registry without its params table.
DESCRIPTION_LIMIT = 5000
# A class with fewer original images than this in a split has per-class figures that are noise.
FEW_IMAGES = 10
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
        *markdown_table(header, rows),
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
    return ["", "Per source, on the validation split:", "", *markdown_table(header, rows)]


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
    lines += markdown_table(
        ["set", "melanomas", "sensitivity", "specificity", "below target"], rows
    )
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
        *markdown_table(header, rows),
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
    return lines + markdown_table(
        ["set", "ECE before", "ECE after", "Brier before", "Brier after"], rows
    )


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
                for line in markdown_table(
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
    lines = [LINEAGE_HEADING, "", *markdown_table(["what", "value"], rows), ""]
    if with_params:
        lines += [
            "Params (params.yaml):",
            "",
            *markdown_table(["param", "value"], [[k, f"`{v}`"] for k, v in facts.params.items()]),
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
