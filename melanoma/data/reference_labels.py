"""ISIC's own diagnosis as a check on the folder labels (params.yaml `validate.reference_labels`).

The reference is a CSV in the format of the ISIC 2019 ground truth: an `image` column with the
ISIC id (some with a suffix such as `_downsampled`) and one 0/1 column per class, exactly one 1
a row. `validate.reference_classes` maps each of the nine folder labels to the column that
diagnoses it. Two labels may share a column (BKL covers both keratoses): the reference then
agrees with either, but cannot pick one of them. Images match rows by the ISIC id in their file
name. What validate does with a disagreement is `validate.on_reference_disagreement`
(melanoma.data.duplicates applies it, in order with the other policies).
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from melanoma.errors import MelanomaError
from melanoma.params.data import ValidateParams

PARAM = "validate.reference_labels"
IMAGE_COLUMN = "image"
# "ISIC_0000043", "ISIC_0000043_downsampled", "ISIC_0025509(1)": the id starts the name.
ISIC_ID = re.compile(r"ISIC_(\d{7})(?!\d)", re.IGNORECASE)
EXAMPLES_SHOWN = 3  # bad rows named in an error message; the count is always complete

# reference_check of an accepted image in the validated manifest (empty for rejected rows).
AGREES = "agrees"
DISAGREES = "disagrees"
NOT_IN_REFERENCE = "not_in_reference"  # counted, not an error: the table covers most, not all
NO_ISIC_ID = "no_isic_id"
AMBIGUOUS_ID = "ambiguous_id"  # the id has two different labels in the table: left unresolved
CHECK_OFF = "off"

# label_source: where the label used (column `label`) came from.
FOLDER, REFERENCE = "folder", "reference"


class ReferenceLabelsError(MelanomaError, ValueError):
    """The reference file is missing, empty or malformed; the message names the param and path."""


@dataclass(frozen=True)
class ReferenceLabels:
    path: Path
    sha256: str
    rows: int
    classes: dict[str, str]  # ISIC id -> the one class column marked for it
    ambiguous: dict[str, list[str]]  # ISIC id -> its different classes (rows disagree)
    labels_by_class: dict[str, tuple[str, ...]]  # class -> the folder labels it diagnoses

    def named_label(self, reference_class: str) -> str:
        """The one folder label `reference_class` names, or "" if it names none or several."""
        labels = self.labels_by_class.get(reference_class, ())
        return labels[0] if len(labels) == 1 else ""


def isic_id(name: str) -> str | None:
    """`ISIC_` and 7 digits at the start of a file name or table entry, upper-cased; else None."""
    match = ISIC_ID.match(name)
    return f"ISIC_{match.group(1)}" if match else None


def _error(path: Path, problem: str) -> ReferenceLabelsError:
    return ReferenceLabelsError(f"{PARAM}: {path}: {problem}")


def _examples(table: pd.DataFrame, rows: pd.Index, what: str) -> str:
    # +2: the header is line 1 and the index counts from 0.
    shown = ", ".join(
        f"line {i + 2} ({table.at[i, IMAGE_COLUMN]!r}: {what})" for i in rows[:EXAMPLES_SHOWN]
    )
    more = f" and {len(rows) - EXAMPLES_SHOWN} more" if len(rows) > EXAMPLES_SHOWN else ""
    return f"{shown}{more}"


def read_reference_table(path: Path, policy: ValidateParams) -> pd.DataFrame:
    """The reference CSV as text, its columns checked against the params; raises
    ReferenceLabelsError naming the param, the path and what is wrong."""
    if not path.is_file():
        raise _error(path, "no such file (set the path of ISIC's ground-truth CSV, or null)")
    if path.stat().st_size == 0:
        raise _error(path, "the file is empty")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise _error(path, f"not a readable CSV ({error})") from None
    columns = [str(c) for c in table.columns]
    if IMAGE_COLUMN not in columns:
        raise _error(path, f"no {IMAGE_COLUMN!r} column (columns: {columns})")
    mapped = sorted(set(policy.reference_classes.values()))
    known = {IMAGE_COLUMN, *mapped, *policy.reference_other_classes}
    unknown = [c for c in columns if c not in known]
    if unknown:
        # pandas renames a repeated header to "MEL.1": it shows up here as unknown too.
        raise _error(
            path,
            f"unknown column(s) {unknown}: name each in validate.reference_classes or "
            "validate.reference_other_classes",
        )
    missing = [c for c in mapped if c not in columns]
    if missing:
        raise _error(path, f"no column(s) {missing}, which validate.reference_classes names")
    if table.empty:
        raise _error(path, "a header but no rows")
    return table


def _check_rows(path: Path, table: pd.DataFrame, class_columns: list[str]) -> pd.Series:
    """The class column marked in each row; raises if a row has no ISIC id or is not one-hot."""
    no_id = table.index[table[IMAGE_COLUMN].map(isic_id).isna()]
    if len(no_id):
        raise _error(
            path,
            f"{len(no_id)} row(s) without an ISIC id (ISIC_ + 7 digits) in {IMAGE_COLUMN!r}: "
            + _examples(table, no_id, "no id"),
        )
    values = table[class_columns].apply(pd.to_numeric, errors="coerce")
    not_binary = values.isna() | ~values.isin([0, 1])
    bad = table.index[not_binary.any(axis=1)]
    if len(bad):
        raise _error(
            path,
            f"{len(bad)} row(s) with values other than 0 and 1 in the class columns: "
            + _examples(table, bad, "not 0/1"),
        )
    bad = table.index[values.sum(axis=1) != 1]
    if len(bad):
        raise _error(
            path,
            f"{len(bad)} row(s) not one-hot (exactly one class marked): "
            + _examples_marked(table, values, bad),
        )
    return values.idxmax(axis=1)


def _examples_marked(table: pd.DataFrame, values: pd.DataFrame, rows: pd.Index) -> str:
    shown = ", ".join(
        f"line {i + 2} ({table.at[i, IMAGE_COLUMN]!r}: "
        f"{[c for c in values.columns if values.at[i, c] == 1] or 'none'} marked)"
        for i in rows[:EXAMPLES_SHOWN]
    )
    more = f" and {len(rows) - EXAMPLES_SHOWN} more" if len(rows) > EXAMPLES_SHOWN else ""
    return f"{shown}{more}"


def load_reference_labels(path: Path, policy: ValidateParams) -> ReferenceLabels:
    """Read and check the reference CSV: one class per ISIC id, ids with two labels apart."""
    table = read_reference_table(path, policy)
    class_columns = [c for c in table.columns if c != IMAGE_COLUMN]
    marked = _check_rows(path, table, class_columns)
    ids = table[IMAGE_COLUMN].map(isic_id)
    # The same id twice (e.g. with and without `_downsampled`) is fine if both say the same.
    classes_per_id = marked.groupby(ids).agg(lambda c: sorted(set(c)))
    labels_by_class = {
        column: tuple(label for label, c in policy.reference_classes.items() if c == column)
        for column in class_columns
    }
    return ReferenceLabels(
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        rows=len(table),
        classes={i: c[0] for i, c in classes_per_id.items() if len(c) == 1},
        ambiguous={i: c for i, c in classes_per_id.items() if len(c) > 1},
        labels_by_class=labels_by_class,
    )


def check_labels(
    folder_labels: pd.Series, image_names: pd.Series, reference: ReferenceLabels | None
) -> pd.DataFrame:
    """reference_class and reference_check of each image, given its folder label and file name."""
    if reference is None:
        return pd.DataFrame(
            {"reference_class": "", "reference_check": CHECK_OFF}, index=folder_labels.index
        )
    ids = image_names.map(isic_id)
    reference_class = ids.map(reference.classes).fillna("")
    agrees = [
        label in reference.labels_by_class.get(c, ())
        for label, c in zip(folder_labels, reference_class, strict=True)
    ]
    check = pd.Series(np.where(agrees, AGREES, DISAGREES), index=folder_labels.index, dtype=str)
    check[reference_class == ""] = NOT_IN_REFERENCE
    check[ids.isin(list(reference.ambiguous))] = AMBIGUOUS_ID
    check[ids.isna()] = NO_ISIC_ID
    return pd.DataFrame({"reference_class": reference_class, "reference_check": check})


def decide_conflict(files: pd.DataFrame, reference: ReferenceLabels | None) -> str | None:
    """The folder label the reference gives a label conflict (one image, several folder
    labels), or None when it cannot decide: no copy matched, the copies' rows name different
    classes, or the class fits none or several of the group's folder labels."""
    if reference is None:
        return None
    matched = files[files["reference_check"].isin([AGREES, DISAGREES])]
    classes = set(matched["reference_class"])
    if len(classes) != 1:
        return None
    fitting = set(reference.labels_by_class.get(classes.pop(), ())) & set(files["folder_label"])
    return fitting.pop() if len(fitting) == 1 else None
