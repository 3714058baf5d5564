"""Content checks on the accepted images, and the decision (use or drop) for every manifest row.

Images with the same pixels (same `pixel_sha256`) form a group. A group can be any of:
- a label conflict: it carries two or more labels;
- a leak: it has images in both train and test;
- a duplicate: two or more of its images share one label and one split.

One group can be all three at once, so the policies (params.yaml `validate`) apply in a fixed
order, each to the images still in use after the previous one:
1. `on_label_conflict`: `drop` removes every image of the group, in both splits, because which
   label is right cannot be known; a conflicting group that leaks is resolved with it.
2. `on_leak`: `drop_from_train` / `drop_from_test` removes the group's images in that split.
3. `on_duplicate`: `keep_first` keeps the first image by source_path in each label and split.
`keep` / `keep_all` leave the images in use. `fail` records a policy failure when a case of its
kind is still there at its turn; the images stay in use and the stage exits non-zero.

Rows that ingest rejected are dropped with the reason `ingest:<reason>`, so every source file
stays accounted for in the validated manifest.
"""

from dataclasses import dataclass

import pandas as pd

from melanoma.config import ValidateParams
from melanoma.manifest import ACCEPTED, DROP, USE, VALIDATED_COLUMNS

LABEL_CONFLICT, LEAK, DUPLICATE = "label_conflict", "leak", "duplicate"
INGEST_REJECTION_PREFIX = "ingest:"
GROUP_ID_LENGTH = 12  # hex digits of the pixel hash that name a group in the manifest


@dataclass(frozen=True)
class ContentChecks:
    manifest: pd.DataFrame  # every input row, with decision, decision_reason, duplicate_group
    label_conflicts: list[dict]  # one entry per group, with its files and their decisions
    leaks: list[dict]
    duplicates: list[dict]  # one entry per group, label and split
    policy_failures: list[str]


def same_pixel_groups(manifest: pd.DataFrame) -> dict[str, pd.Index]:
    """Row labels of the accepted images that share their pixels with another, by pixel hash.

    Each group's rows are ordered by source_path, the order `keep_first` relies on.
    """
    accepted = manifest[(manifest["status"] == ACCEPTED) & (manifest["pixel_sha256"] != "")]
    shared = accepted[accepted["pixel_sha256"].duplicated(keep=False)]
    return {
        pixel_hash: rows.sort_values("source_path").index
        for pixel_hash, rows in shared.groupby("pixel_sha256", sort=True)
    }


def resolve_content(manifest: pd.DataFrame, policy: ValidateParams) -> ContentChecks:
    """Find label conflicts, leaks and duplicates; decide use/drop for every row by `policy`."""
    decided = manifest.copy()
    rejected = decided["status"] != ACCEPTED
    decided["decision"] = USE
    decided["decision_reason"] = ""
    decided.loc[rejected, "decision"] = DROP
    decided.loc[rejected, "decision_reason"] = INGEST_REJECTION_PREFIX + decided.loc[
        rejected, "reason"
    ].astype(str)
    decided["duplicate_group"] = ""

    groups = same_pixel_groups(decided)
    for pixel_hash, rows in groups.items():
        decided.loc[rows, "duplicate_group"] = pixel_hash[:GROUP_ID_LENGTH]

    conflicts = [rows for rows in groups.values() if decided.loc[rows, "label"].nunique() > 1]
    leaks = [rows for rows in groups.values() if decided.loc[rows, "split"].nunique() > 1]
    duplicates = [
        subgroup.index
        for rows in groups.values()
        for _, subgroup in decided.loc[rows].groupby(["label", "split"], sort=True)
        if len(subgroup) > 1
    ]

    failures = [
        *_apply_conflict_policy(decided, conflicts, policy.on_label_conflict),
        *_apply_leak_policy(decided, leaks, policy.on_leak),
        *_apply_duplicate_policy(decided, duplicates, policy.on_duplicate),
    ]
    return ContentChecks(
        manifest=decided[VALIDATED_COLUMNS],
        label_conflicts=[_case(decided, rows) for rows in conflicts],
        leaks=[_case(decided, rows) for rows in leaks],
        duplicates=[_case(decided, rows) for rows in duplicates],
        policy_failures=failures,
    )


def _in_use(decided: pd.DataFrame, rows: pd.Index) -> pd.Index:
    return rows[decided.loc[rows, "decision"] == USE]


def _drop(decided: pd.DataFrame, rows: pd.Index, reason: str) -> None:
    decided.loc[rows, "decision"] = DROP
    decided.loc[rows, "decision_reason"] = reason


def _apply_conflict_policy(
    decided: pd.DataFrame, conflicts: list[pd.Index], action: str
) -> list[str]:
    # Conflicts go first, so every group is still wholly in use here.
    if action == "drop":
        for rows in conflicts:
            _drop(decided, rows, LABEL_CONFLICT)
    elif action == "fail" and conflicts:
        return [_failure_message(decided, conflicts, "label conflict", "on_label_conflict")]
    return []


def _apply_leak_policy(decided: pd.DataFrame, leaks: list[pd.Index], action: str) -> list[str]:
    remaining = [
        in_use
        for in_use in (_in_use(decided, rows) for rows in leaks)
        if decided.loc[in_use, "split"].nunique() > 1
    ]
    if action in ("drop_from_train", "drop_from_test"):
        split = action.removeprefix("drop_from_")
        for rows in remaining:
            _drop(decided, rows[decided.loc[rows, "split"] == split], LEAK)
    elif action == "fail" and remaining:
        return [_failure_message(decided, remaining, "train/test leak", "on_leak")]
    return []


def _apply_duplicate_policy(
    decided: pd.DataFrame, duplicates: list[pd.Index], action: str
) -> list[str]:
    remaining = [
        in_use for in_use in (_in_use(decided, rows) for rows in duplicates) if len(in_use) > 1
    ]
    if action == "keep_first":
        for rows in remaining:
            _drop(decided, rows[1:], DUPLICATE)
    elif action == "fail" and remaining:
        return [_failure_message(decided, remaining, "within-label duplicate", "on_duplicate")]
    return []


def _failure_message(decided: pd.DataFrame, cases: list[pd.Index], kind: str, param: str) -> str:
    examples = "; ".join(" = ".join(decided.loc[rows, "source_path"]) for rows in cases[:3])
    more = f" (and {len(cases) - 3} more)" if len(cases) > 3 else ""
    return f"{len(cases)} {kind} case(s) and validate.{param} is fail: {examples}{more}"


def _case(decided: pd.DataFrame, rows: pd.Index) -> dict:
    files = decided.loc[rows]
    return {
        "group": files["duplicate_group"].iloc[0],
        "pixel_sha256": files["pixel_sha256"].iloc[0],
        "labels": sorted(files["label"].unique()),
        "splits": sorted(files["split"].unique()),
        "files": files[
            ["source_path", "split", "label", "image_id", "decision", "decision_reason"]
        ].to_dict("records"),
    }
