"""The Great Expectations (GX Core 1.x) suites on the manifest, and the validation report.

The suites live in melanoma/data/expectations/manifest_suite.json: `manifest` runs on every row of
the manifest, `class_counts` on a table of the images accepted and used per label and split.
Values that depend on params.yaml are GX suite parameters (`{"$PARAMETER": name}` in the
file), filled in at run time. An expectation's `severity` says whether its failure stops the
stage (`critical`) or is only reported (`warning`), so no code here knows which are critical.
"""

import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from melanoma.data.duplicates import (
    LABEL_CONFLICT_BY_REFERENCE,
    REFERENCE_DISAGREEMENT,
    ContentChecks,
)
from melanoma.data.manifest import ACCEPTED, INGEST_COLUMNS, USE
from melanoma.data.reference_labels import DISAGREES, REFERENCE, ReferenceLabels
from melanoma.labels import LABELS
from melanoma.params.data import ValidateParams
from melanoma.reports import ExpectationOutcome, ReferenceCheck, ValidationReport

SUITE_FILE = Path(__file__).parent / "expectations" / "manifest_suite.json"
SPLITS = ("train", "test")
NUMERIC_COLUMNS = ("source_width", "source_height", "source_bytes", "width", "height", "channels")
# Failing rows named in the report per expectation; the counts are always complete.
UNEXPECTED_SHOWN = 20
# The columns that name a failing row in each suite's results.
ROW_NAMES = {"manifest": ["source", "source_path"], "class_counts": ["label", "split"]}
# Copies of one image in two sources named in the report; the validated manifest names them all.
EXAMPLES_LISTED = 20


def load_suites(path: Path = SUITE_FILE) -> dict[str, dict]:
    """The suites by the table they run on, as GX suite dicts."""
    with open(path) as f:
        suites = json.load(f)
    unknown = sorted(set(suites) - set(ROW_NAMES))
    if unknown:
        raise ValueError(f"{path}: suites {unknown} run on no table; tables are {list(ROW_NAMES)}")
    return suites


def suite_parameters(policy: ValidateParams) -> dict[str, object]:
    return {
        "required_columns": INGEST_COLUMNS,
        "labels": list(LABELS),
        "min_width": policy.min_width,
        "min_height": policy.min_height,
        "min_train_images_per_class": policy.min_images_per_class["train"],
        "min_test_images_per_class": policy.min_images_per_class["test"],
    }


def typed_for_gx(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with empty fields as nulls and sizes as numbers, as GX expects them."""
    typed = manifest.mask(manifest == "")
    for column in NUMERIC_COLUMNS:
        if column in typed.columns:
            typed[column] = pd.to_numeric(typed[column], errors="coerce")
    return typed


def class_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images accepted at ingest (by folder label) and images used after the decisions (by the
    label used), per label and split.

    Every one of the 9 x 2 pairs is present (0 if none), so a missing class shows as a zero.
    A class whose images the reference relabels all is present in the source (accepted) but
    not used: a warning, not the critical "missing class".
    """
    every_pair = pd.MultiIndex.from_product([LABELS, SPLITS], names=["label", "split"])

    def count(rows: pd.DataFrame, label: str) -> pd.Series:
        return rows.groupby([label, "split"]).size().reindex(every_pair, fill_value=0)

    return pd.DataFrame(
        {
            "accepted": count(manifest[manifest["status"] == ACCEPTED], "folder_label"),
            "used": count(manifest[manifest["decision"] == USE], "label"),
        }
    ).reset_index()


def too_few_to_learn(counts: pd.DataFrame, policy: ValidateParams) -> dict[str, int]:
    """Labels with fewer training images in use than validate.min_images_per_class.train."""
    train = counts[counts["split"] == "train"]
    short = train[train["used"] < policy.min_images_per_class["train"]]
    return {row.label: int(row.used) for row in short.itertuples()}


def counts_by_label(counts: pd.DataFrame, column: str) -> dict[str, dict[str, int]]:
    return {
        label: {row.split: int(getattr(row, column)) for row in table.itertuples()}
        for label, table in counts.groupby("label", sort=False)
    }


def run_expectations(
    manifest: pd.DataFrame,
    policy: ValidateParams,
    docs_dir: Path,
    suite_file: Path = SUITE_FILE,
) -> list[ExpectationOutcome]:
    """Run the suites on a validated manifest and build GX Data Docs in `docs_dir`."""
    # GX logs hundreds of INFO lines about its own set-up; its warnings still come through.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    # GX takes seconds to import: only the stage that validates should pay for it.
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    if docs_dir.exists():
        shutil.rmtree(docs_dir)
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
            data_docs_sites={
                "reports": {
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(docs_dir.resolve()),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                }
            },
        ),
    )
    tables = {
        "manifest": typed_for_gx(manifest),
        "class_counts": class_counts(manifest),
    }
    data_source = context.data_sources.add_pandas("validate")
    parameters = suite_parameters(policy)
    results: list[ExpectationOutcome] = []
    for table, suite_dict in load_suites(suite_file).items():
        suite = context.suites.add(gx.ExpectationSuite(**suite_dict))
        batch = data_source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=table, data=batch, suite=suite)
        )
        outcome = definition.run(
            batch_parameters={"dataframe": tables[table]},
            expectation_parameters=parameters,
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": ROW_NAMES[table],
                "partial_unexpected_count": UNEXPECTED_SHOWN,
            },
        )
        results.extend(_result(table, r.to_json_dict()) for r in outcome.results)
    context.build_data_docs()
    return results


def _result(suite: str, result: dict) -> ExpectationOutcome:
    config = result["expectation_config"]
    return ExpectationOutcome(
        suite=suite,
        name=config.get("description") or config["type"],
        expectation=config["type"],
        column=config["kwargs"].get("column"),
        success=bool(result["success"]),
        critical=config.get("severity") == "critical",
        observed_value=_observed_value(result),
    )


def _observed_value(result: dict) -> object:
    if result["exception_info"].get("raised_exception"):
        return {"error": result["exception_info"]["exception_message"]}
    details = result["result"]
    if "observed_value" in details:
        return details["observed_value"]
    observed = {"checked": details.get("element_count"), "failing": details["unexpected_count"]}
    if details["unexpected_count"]:
        observed["failing_rows"] = details.get("partial_unexpected_index_list") or details.get(
            "partial_unexpected_list"
        )
    return observed


def critical_failures(expectations: list[ExpectationOutcome]) -> list[str]:
    return [
        f"{e.suite}: {e.name} failed (observed: {json.dumps(e.observed_value, default=str)})"
        for e in expectations
        if e.critical and not e.success
    ]


def build_report(
    expectations: list[ExpectationOutcome],
    checks: ContentChecks,
    policy: ValidateParams,
    reference: ReferenceLabels | None = None,
) -> ValidationReport:
    manifest = checks.manifest
    dropped = manifest[manifest["decision"] != USE]
    counts = class_counts(manifest)
    failures = [*critical_failures(expectations), *checks.policy_failures]
    report = {
        "success": not failures,
        "failures": failures,
        "policy": {
            "on_label_conflict": policy.on_label_conflict,
            "on_leak": policy.on_leak,
            "on_duplicate": policy.on_duplicate,
            "on_reference_disagreement": policy.on_reference_disagreement,
        },
        "expectations": [e.to_dict() for e in expectations],
        "class_counts": {
            column: counts_by_label(counts, column) for column in ("accepted", "used")
        },
        "too_few_training_images": {
            "threshold": policy.min_images_per_class["train"],
            "labels": too_few_to_learn(counts, policy),
        },
        "reference_labels": reference_report(checks, reference),
        "label_conflicts": checks.label_conflicts,
        "leaks": checks.leaks,
        "duplicates": checks.duplicates,
        "sources": source_report(manifest),
        # Every copy is in the validated manifest (same_image_other_source): a few examples here.
        "same_image_copies": {
            "count": len(checks.same_image_copies),
            "examples": checks.same_image_copies[:EXAMPLES_LISTED],
        },
        "near_duplicates": {
            "max_distance": policy.near_duplicate_distance,
            "count": len(checks.near_duplicates),
            "pairs": checks.near_duplicates,
        },
        "same_group_as_test": {
            "count": len(checks.test_group_exclusions),
            "files": checks.test_group_exclusions,
        },
        "decisions": {str(k): int(v) for k, v in manifest["decision"].value_counts().items()},
        "removed": {
            str(k): int(v)
            for k, v in dropped["decision_reason"].value_counts().sort_index().items()
        },
    }
    return ValidationReport.model_validate(report)


def source_report(manifest: pd.DataFrame) -> dict[str, dict]:
    """Per source: its files, the images used per split, and what was removed, by reason."""
    report = {}
    for source, rows in manifest.groupby("source", sort=False):
        used = rows[rows["decision"] == USE]
        removed = rows.loc[rows["decision"] != USE, "decision_reason"].value_counts().sort_index()
        report[str(source)] = {
            "files": len(rows),
            "used": {split: int((used["split"] == split).sum()) for split in SPLITS},
            "removed": {str(k): int(v) for k, v in removed.items()},
        }
    return report


def reference_report(checks: ContentChecks, reference: ReferenceLabels | None) -> ReferenceCheck:
    """What the reference check found and did: counts, every disagreement, label pairs."""
    manifest = checks.manifest
    if reference is None:
        return ReferenceCheck(file=None)
    accepted = manifest[manifest["status"] == ACCEPTED]
    disagreements = accepted[accepted["reference_check"] == DISAGREES].assign(
        reference_label=lambda d: d["reference_class"].map(reference.named_label),
        action=lambda d: [_action(row) for row in d.itertuples()],
    )
    pairs = (
        disagreements.groupby(["folder_label", "reference_class", "reference_label"])
        .agg(images=("action", "size"), actions=("action", lambda a: a.value_counts().to_dict()))
        .reset_index()
    )
    decided = [c for c in checks.label_conflicts if c["reference_decides"]]
    recovered = pd.DataFrame(
        [f for c in decided for f in c["files"] if f["decision"] == USE],
        columns=["label", "split"],
    )
    return ReferenceCheck(
        file=str(reference.path),
        sha256=reference.sha256,
        rows=reference.rows,
        ambiguous_ids=reference.ambiguous,
        images={
            str(k): int(v)
            for k, v in accepted["reference_check"].value_counts().sort_index().items()
        },
        relabelled=int((accepted["label_source"] == REFERENCE).sum()),
        label_conflicts_decided=len(decided),
        label_conflicts_undecided=len(checks.label_conflicts) - len(decided),
        recovered_from_conflicts={
            label: {split: int((rows["split"] == split).sum()) for split in SPLITS}
            for label, rows in recovered.groupby("label")
        },
        disagreement_pairs=pairs.to_dict("records"),
        disagreements=disagreements[
            [
                "source_path",
                "split",
                "folder_label",
                "reference_class",
                "reference_label",
                "label",
                "action",
                "decision",
                "decision_reason",
            ]
        ].to_dict("records"),
    )


def _action(row) -> str:
    """What the reference check did to one disagreeing image (later policies may still drop it:
    its decision and decision_reason say)."""
    if row.decision_reason == LABEL_CONFLICT_BY_REFERENCE:
        return "dropped_conflicting_copy"
    if row.decision_reason == REFERENCE_DISAGREEMENT:
        return "dropped"
    if row.label_source == REFERENCE:
        return "relabelled"
    return "kept_folder_label"


def summary_lines(report: ValidationReport) -> list[str]:
    failed = [e for e in report.expectations if not e.success]
    return [
        f"expectations: {len(report.expectations) - len(failed)} passed, {len(failed)} failed",
        *(
            f"  failed ({'critical' if e.critical else 'warning'}): {e.suite}: {e.name}"
            for e in failed
        ),
        f"label conflicts: {len(report.label_conflicts)} groups, leaks: "
        f"{len(report.leaks)} groups, within-label duplicates: {len(report.duplicates)}",
        *_reference_lines(report.reference_labels),
        f"same ISIC id in several sources: {report.same_image_copies.count} (one copy "
        f"kept each); near-duplicate pairs not otherwise linked: "
        f"{report.near_duplicates.count}; training images sharing a group with a test "
        f"image: {report.same_group_as_test.count}",
        "decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(report.decisions.items())),
        *(f"  dropped ({reason}): {n}" for reason, n in report.removed.items()),
        *(
            f"  source {name}: {s.files} files, used train {s.used['train']} / test "
            f"{s.used['test']}, removed "
            + (", ".join(f"{k} {v}" for k, v in s.removed.items()) or "none")
            for name, s in report.sources.items()
        ),
        "images used per class (train/test): "
        + ", ".join(
            f"{label} {c['train']}/{c['test']}" for label, c in report.class_counts.used.items()
        ),
    ]


def _reference_lines(found: ReferenceCheck) -> list[str]:
    if found.file is None:
        return ["reference labels: off (validate.reference_labels is null)"]
    # A check with a file has every field (ReferenceCheck's validator), so none is None here.
    images, pairs, ambiguous = (
        found.images or {},
        found.disagreement_pairs or [],
        found.ambiguous_ids or {},
    )
    return [
        f"reference labels ({found.file}): "
        + ", ".join(f"{k} {v}" for k, v in images.items())
        + f"; relabelled {found.relabelled}; label conflicts decided "
        f"{found.label_conflicts_decided}, undecided {found.label_conflicts_undecided}",
        *(
            f"  {p.folder_label} folder, reference {p.reference_class}: {p.images} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(p.actions.items()))})"
            for p in pairs
        ),
        *(
            f"  id {i} has two labels in the reference ({'/'.join(c)}): left unchecked"
            for i, c in ambiguous.items()
        ),
    ]


def too_few_warnings(report: ValidationReport) -> list[str]:
    """One line per class with too few training images left to learn from."""
    short = report.too_few_training_images
    return [
        f"class {label} has {n} training image(s) in use after the decisions, below "
        f"validate.min_images_per_class.train={short.threshold}: too few to learn it"
        for label, n in short.labels.items()
    ]
