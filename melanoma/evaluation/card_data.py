"""The model card's data sections: the sources and the images each gave every split, and what
validate removed or changed (from reports/validation.json)."""

import re

import pandas as pd

from melanoma.data.manifest import images_per_source, is_augmented_copy
from melanoma.evaluation.card_facts import CardFacts
from melanoma.evaluation.card_format import markdown_table, number
from melanoma.labels import LABELS
from melanoma.reports import ReferenceCheck, ValidationReport

# ISIC image ids grow with the archive's age; the ablation found the test split's melanomas and
# nevi all below this id, the training ones mostly above it (bench/ABLATION.md).
OLD_ARCHIVE_IDS_BELOW = 1000
SPLITS = ("train", "val", "test")
ISIC_ID = re.compile(r"ISIC_(\d+)")


def image_counts(images: pd.DataFrame) -> pd.DataFrame:
    """Original images per label (rows, every label) and split (train, val, test), plus the
    augmented copies added to train."""
    copy = is_augmented_copy(images)
    original = images[~copy]
    counts = (
        original.groupby(["label", "split"])
        .size()
        .unstack(fill_value=0)
        .reindex(index=list(LABELS), columns=list(SPLITS), fill_value=0)
    )
    counts["train_augmented_copies"] = (
        images[copy].groupby("label").size().reindex(list(LABELS), fill_value=0)
    )
    return counts.astype(int)


def archive_mix(images: pd.DataFrame) -> pd.DataFrame:
    """Per split, original melanomas and nevi with an ISIC id below OLD_ARCHIVE_IDS_BELOW (the
    oldest archive) and above it: where the test split's mix differs from training's, a network
    can learn the archive instead of the lesion."""
    original = images[~is_augmented_copy(images)]
    ids = original["source_image_id"].astype(str).str.extract(ISIC_ID, expand=False)
    old = pd.to_numeric(ids, errors="coerce") < OLD_ARCHIVE_IDS_BELOW
    table = pd.DataFrame(index=list(SPLITS))
    for label in ("melanoma", "nevus"):
        of_label = original["label"] == label
        for column, rows in ((f"{label}_old", of_label & old), (f"{label}_later", of_label & ~old)):
            table[column] = original[rows].groupby("split").size().reindex(SPLITS, fill_value=0)
    return table.astype(int)


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
    return markdown_table(
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
        lines += markdown_table(
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
            *markdown_table(
                ["reason", "images"], [[k, number(v)] for k, v in validation.removed.items()]
            ),
        ]
    return lines
