"""Content checks on the accepted images, and the decision (use or drop) for every manifest row.

Images with the same pixels (same `pixel_sha256`) form a group. A group can be any of:
- a label conflict: it carries two or more labels;
- a leak: it has images in both train and test;
- a duplicate: two or more of its images share one label and one split.

With `validate.reference_labels` set, every accepted image is also checked against ISIC's own
diagnosis (melanoma.data.reference_labels): its folder label agrees with the reference, disagrees,
or cannot be checked (not in the table, no ISIC id in its name, an id the table gives two labels).

One group can be all three at once, so the decisions apply in a fixed order, each to the images
still in use after the previous one:
1. Label conflicts the reference decides (it fits exactly one of the group's folder labels):
   the copies under that label stay, the others are dropped as `label_conflict_by_reference`.
   This is what the reference is for, so it applies whatever the policies below say.
2. `on_label_conflict`, for the conflicts the reference cannot decide: `drop` removes every
   image of the group, in both splits, because which label is right cannot be known; a
   conflicting group that leaks is resolved with it.
3. `on_reference_disagreement`, for the images still in use whose folder label the reference
   contradicts: `relabel` takes the reference's label when its class names exactly one of the
   nine (otherwise the folder's label stays), `drop` removes them as `reference_disagreement`.
4. `on_leak`: `drop_from_train` / `drop_from_test` removes the group's images in that split.
5. `on_duplicate`: `keep_first` keeps the first image by source_path in each label and split
   (labels as they are after step 3, so two relabelled copies count as duplicates).
6. One image, one copy: the same ISIC id in two or more sources (at other sizes, so other
   pixels) keeps one copy in use, `same_image_other_source` for the rest: the copy in the test
   split if there is one (the test split stays whole), else the copy of the source listed
   first in data.sources (the manifest's order).
7. Groups (melanoma.data.groups): copies, photographs of one lesion and near-duplicates form
   one group, whatever was dropped above (a dropped copy still links its lesion). `on_leak`
   again, for the groups still in use in both splits: `drop_from_train` (the default) drops
   their training images as `same_group_as_test`, so a lesion in the test split has no image
   in training; `drop_from_test` drops their test images instead. The validated manifest
   names each accepted image's group in `group`, which the train/validation split keeps
   whole.
`keep` / `keep_all` leave the images in use. `fail` records a policy failure when a case of its
kind is still there at its turn; the images stay in use and the stage exits non-zero.

The validated manifest keeps the folder's label in `folder_label`; `label` is the label used
and `label_source` says where it came from (`folder` or `reference`).

Rows that ingest rejected are dropped with the reason `ingest:<reason>`, so every source file
stays accounted for in the validated manifest.
"""

from dataclasses import dataclass

import pandas as pd

from melanoma.data.groups import GROUP_ID_LENGTH, image_groups, near_duplicate_pairs
from melanoma.data.manifest import ACCEPTED, DROP, USE, VALIDATED_COLUMNS
from melanoma.data.reference_labels import (
    DISAGREES,
    FOLDER,
    REFERENCE,
    ReferenceLabels,
    check_labels,
    decide_conflict,
    isic_id,
)
from melanoma.params.data import ValidateParams

LABEL_CONFLICT, LEAK, DUPLICATE = "label_conflict", "leak", "duplicate"
LABEL_CONFLICT_BY_REFERENCE = "label_conflict_by_reference"
REFERENCE_DISAGREEMENT = "reference_disagreement"
SAME_IMAGE_OTHER_SOURCE = "same_image_other_source"
SAME_GROUP_AS_TEST = "same_group_as_test"
INGEST_REJECTION_PREFIX = "ingest:"


@dataclass(frozen=True)
class ContentChecks:
    manifest: pd.DataFrame  # every input row, with decision, decision_reason, duplicate_group
    # one entry per group, with its files, their decisions and the label the reference gives
    # the group (`reference_decides`, None if it cannot decide)
    label_conflicts: list[dict]
    leaks: list[dict]
    duplicates: list[dict]  # one entry per group, label and split
    policy_failures: list[str]
    # one entry per ISIC id found in several sources: the copy kept and the copies dropped
    same_image_copies: list[dict]
    # pairs of images within validate.near_duplicate_distance that are not otherwise linked
    near_duplicates: list[dict]
    # training images dropped for sharing a group with a test image, with that image
    test_group_exclusions: list[dict]


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


def resolve_content(
    manifest: pd.DataFrame, policy: ValidateParams, reference: ReferenceLabels | None = None
) -> ContentChecks:
    """Find label conflicts, leaks, duplicates and (with `reference`) images whose folder label
    ISIC's diagnosis contradicts; decide use/drop and the label of every row by `policy`."""
    decided = manifest.copy()
    rejected = decided["status"] != ACCEPTED
    decided["decision"] = USE
    decided["decision_reason"] = ""
    decided.loc[rejected, "decision"] = DROP
    decided.loc[rejected, "decision_reason"] = INGEST_REJECTION_PREFIX + decided.loc[
        rejected, "reason"
    ].astype(str)
    decided["duplicate_group"] = ""
    decided["group"] = ""
    decided["folder_label"] = decided["label"]
    decided["label_source"] = FOLDER
    decided[["reference_class", "reference_check"]] = check_labels(
        decided["label"], decided["image_id"], reference
    )
    # Rejected rows have no image to check; empty fields say so.
    decided.loc[rejected, ["label_source", "reference_class", "reference_check"]] = ""

    groups = same_pixel_groups(decided)
    for pixel_hash, rows in groups.items():
        decided.loc[rows, "duplicate_group"] = pixel_hash[:GROUP_ID_LENGTH]

    conflicts = [rows for rows in groups.values() if decided.loc[rows, "label"].nunique() > 1]
    leaks = [rows for rows in groups.values() if decided.loc[rows, "split"].nunique() > 1]
    verdicts = [decide_conflict(decided.loc[rows], reference) for rows in conflicts]

    _apply_reference_to_conflicts(decided, conflicts, verdicts)
    failures = [
        *_apply_conflict_policy(
            decided,
            [rows for rows, verdict in zip(conflicts, verdicts, strict=True) if verdict is None],
            policy.on_label_conflict,
        ),
        *_apply_disagreement_policy(decided, reference, policy.on_reference_disagreement),
        *_apply_leak_policy(decided, leaks, policy.on_leak),
    ]
    # After relabelling: copies that now share a label are duplicates of that label.
    duplicates = [
        subgroup.index
        for rows in groups.values()
        for _, subgroup in decided.loc[rows].groupby(["label", "split"], sort=True)
        if len(subgroup) > 1
    ]
    failures += _apply_duplicate_policy(decided, duplicates, policy.on_duplicate)
    near = _group_images(decided, policy.near_duplicate_distance)
    same_image = _keep_one_copy_per_id(decided)
    excluded, group_failures = _apply_group_leak_policy(decided, policy.on_leak, leaks)
    failures += group_failures
    return ContentChecks(
        manifest=decided[VALIDATED_COLUMNS],
        label_conflicts=[
            {**_case(decided, rows), "reference_decides": verdict}
            for rows, verdict in zip(conflicts, verdicts, strict=True)
        ],
        leaks=[_case(decided, rows) for rows in leaks],
        duplicates=[_case(decided, rows) for rows in duplicates],
        policy_failures=failures,
        same_image_copies=same_image,
        near_duplicates=near,
        test_group_exclusions=excluded,
    )


def _in_use(decided: pd.DataFrame, rows: pd.Index) -> pd.Index:
    return rows[decided.loc[rows, "decision"] == USE]


def _drop(decided: pd.DataFrame, rows: pd.Index, reason: str) -> None:
    decided.loc[rows, "decision"] = DROP
    decided.loc[rows, "decision_reason"] = reason


def _apply_reference_to_conflicts(
    decided: pd.DataFrame, conflicts: list[pd.Index], verdicts: list[str | None]
) -> None:
    # Conflicts go first, so every group is still wholly in use here.
    for rows, verdict in zip(conflicts, verdicts, strict=True):
        if verdict is not None:
            other = rows[decided.loc[rows, "folder_label"] != verdict]
            _drop(decided, other, LABEL_CONFLICT_BY_REFERENCE)


def _apply_disagreement_policy(
    decided: pd.DataFrame, reference: ReferenceLabels | None, action: str
) -> list[str]:
    if reference is None:
        return []
    rows = decided.index[(decided["reference_check"] == DISAGREES) & (decided["decision"] == USE)]
    if action == "relabel":
        named = decided.loc[rows, "reference_class"].map(reference.named_label)
        # A class that names several labels (BKL) or none (UNK) cannot decide: folder label stays.
        relabel = named[named != ""]
        decided.loc[relabel.index, "label"] = relabel
        decided.loc[relabel.index, "label_source"] = REFERENCE
    elif action == "drop":
        _drop(decided, rows, REFERENCE_DISAGREEMENT)
    elif action == "fail" and len(rows):
        examples = "; ".join(
            f"{r.source_path} ({r.folder_label}, reference {r.reference_class})"
            for r in decided.loc[rows[:3]].itertuples()
        )
        more = f" (and {len(rows) - 3} more)" if len(rows) > 3 else ""
        return [
            f"{len(rows)} image(s) whose folder label the reference contradicts and "
            f"validate.on_reference_disagreement is fail: {examples}{more}"
        ]
    return []


def _apply_conflict_policy(
    decided: pd.DataFrame, conflicts: list[pd.Index], action: str
) -> list[str]:
    # Only the conflicts the reference left undecided come here, each still wholly in use.
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
        "labels": sorted(files["folder_label"].unique()),
        "splits": sorted(files["split"].unique()),
        "files": files[
            [
                "source_path",
                "split",
                "folder_label",
                "label",
                "image_id",
                "reference_class",
                "decision",
                "decision_reason",
            ]
        ].to_dict("records"),
    }


def _keep_one_copy_per_id(decided: pd.DataFrame) -> list[dict]:
    """Step 6: one copy in use per ISIC id found in several sources; the cases, for the report."""
    in_use = decided[decided["decision"] == USE]
    ids = in_use["image_id"].map(isic_id)
    source_rank = {name: rank for rank, name in enumerate(decided["source"].unique())}
    cases = []
    for image_id, rows in in_use.groupby(ids, sort=True):
        if rows["source"].nunique() < 2:
            continue
        order = rows.assign(
            not_test=rows["split"] != "test", rank=rows["source"].map(source_rank)
        ).sort_values(["not_test", "rank", "source_path"])
        kept, others = order.index[0], order.index[1:]
        _drop(decided, others, SAME_IMAGE_OTHER_SOURCE)
        cases.append(
            {
                "isic_id": image_id,
                "kept": _file(decided, kept),
                "dropped": [_file(decided, row) for row in others],
            }
        )
    return cases


def _group_images(decided: pd.DataFrame, max_distance: int | None) -> list[dict]:
    """Step 7's groups, in the `group` column of the accepted rows; returns the near-duplicate
    pairs that no other link (pixels, ISIC id, lesion) explains."""
    accepted = decided[decided["status"] == ACCEPTED]
    if accepted.empty:
        return []
    if max_distance is None:
        pairs = pd.DataFrame({"first": [], "second": [], "distance": []})
    else:
        pairs = near_duplicate_pairs(accepted["perceptual_hash"], max_distance)
    decided.loc[accepted.index, "group"] = image_groups(accepted, pairs)
    first, second = (decided.loc[pairs[side]].reset_index() for side in ("first", "second"))
    first_id, second_id = first["image_id"].map(isic_id), second["image_id"].map(isic_id)
    explained = (
        (first["pixel_sha256"] == second["pixel_sha256"])
        | (first_id.notna() & (first_id == second_id))
        | (
            (first["lesion_id"] != "")
            & (first["source"] == second["source"])
            & (first["lesion_id"] == second["lesion_id"])
        )
    )
    return [
        {
            "distance": int(pair.distance),
            "group": decided.at[pair.first, "group"],
            "files": [_file(decided, pair.first), _file(decided, pair.second)],
        }
        for pair in pairs[~explained.to_numpy()].itertuples()
    ]


def _apply_group_leak_policy(
    decided: pd.DataFrame, action: str, pixel_leaks: list[pd.Index]
) -> tuple[list[dict], list[str]]:
    """Step 7: `on_leak` for groups with images in use in both splits. Returns the images
    dropped (each with an image of its group in the other split) and any policy failure
    (`fail` names only the groups that step 4 did not already report)."""
    in_use = decided[decided["decision"] == USE]
    name = in_use["source"] + "/" + in_use["source_path"]
    by_split = {split: in_use[in_use["split"] == split] for split in ("train", "test")}
    shared = set(by_split["train"]["group"]) & set(by_split["test"]["group"])
    if not shared or action == "keep":
        return [], []
    if action == "fail":
        shared -= {group for rows in pixel_leaks for group in decided.loc[rows, "group"]}
        if not shared:
            return [], []
        return [], [
            f"{len(shared)} group(s) of one lesion or picture with images in both train and "
            f"test, and validate.on_leak is fail: groups {sorted(shared)[:3]} (the group "
            "column of the validated manifest names their files)"
        ]
    split = action.removeprefix("drop_from_")
    other = "test" if split == "train" else "train"
    leaving = by_split[split][by_split[split]["group"].isin(shared)]
    staying = name[in_use["split"] == other].groupby(in_use["group"]).first()
    _drop(decided, leaving.index, SAME_GROUP_AS_TEST)
    return [
        {**_file(decided, row), f"{other}_image": staying[decided.at[row, "group"]]}
        for row in leaving.index
    ], []


def _file(decided: pd.DataFrame, row) -> dict:
    """A file as the report names it."""
    return {
        column: decided.at[row, column]
        for column in ("source", "source_path", "split", "label", "lesion_id", "group")
    }
