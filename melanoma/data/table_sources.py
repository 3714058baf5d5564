"""A data source published as ISIC does: a folder of images and a CSV table that labels them.

Each table row names an image by id (the file name without its suffix), gives its label (one
column of values, or one-hot columns, mapped onto the nine labels by `labels`) and, where the
table has one, its lesion. Every file of the source's folder becomes one `SourceFile`, and so
does every table row whose image is missing, so nothing goes unaccounted for:

    label_table          the table itself (read as the labels, not as an image)
    not_in_table         a file that no table row names as an image of the image folder
                         (README, checksums, stray images)
    unknown_label        its row's label value (or marked one-hot column) is not in `labels`,
                         or the row marks no one-hot column or several
    conflicting_labels   the id is listed twice, with two labels
    missing_lesion_id    the table has a lesion column and the row's cell is empty: without it
                         the image's other photographs could end up on both sides of a split
    missing_image        a table row whose image file is not in the folder (never read)

A table without the named columns, or with no rows, cannot be used at all: TableSourceError,
before any image is read.
"""

import logging
import posixpath
from dataclasses import replace

import pandas as pd

from melanoma.data.sources import Source, SourceError, SourceFile, walk_directory
from melanoma.params.data import TableSource

log = logging.getLogger(__name__)

LABEL_TABLE = "label_table"
NOT_IN_TABLE = "not_in_table"
UNKNOWN_LABEL = "unknown_label"
CONFLICTING_LABELS = "conflicting_labels"
MISSING_LESION_ID = "missing_lesion_id"
MISSING_IMAGE = "missing_image"
EXAMPLES_LOGGED = 3  # rows named in a warning per problem; the manifest names them all


class TableSourceError(SourceError):
    """The table cannot be used at all; the message names the source, the file and the fix."""


def open_table_source(source: TableSource, param: str) -> Source:
    """Every file of the image folder, and every table row without one, placed by the table.

    `param` is the source's place in params.yaml (`data.sources[1]`), for the messages.
    """
    where = f"{param} ({source.name})"
    for field in ("path", "images"):
        folder = source.path if field == "path" else source.path / source.images
        if not folder.is_dir():
            raise TableSourceError(f"{where}.{field}: {folder} is not a directory")
    rows = read_label_table(source, where)
    by_id = {image_id: row for image_id, row in rows.groupby("image_id", sort=False)}
    images = source.images.as_posix().strip("/")
    image_folder = "" if images in ("", ".") else f"{images}/"
    table = source.table.as_posix()
    files = []
    listed: set[str] = set()
    for file in walk_directory(source.path):
        stem, _ = posixpath.splitext(file.path.removeprefix(image_folder))
        if file.problem:
            files.append(file)
        elif file.path == table:
            files.append(replace(file, problem=LABEL_TABLE, detail="the source's label table"))
        elif not file.path.startswith(image_folder) or "/" in stem or stem not in by_id:
            files.append(replace(file, problem=NOT_IN_TABLE, detail=f"no row of {table} names it"))
        else:
            listed.add(stem)
            files.append(_placed(file, by_id[stem], table, source))
    for image_id in sorted(set(by_id) - listed):
        line = int(by_id[image_id]["line"].iloc[0])
        files.append(
            SourceFile(
                f"{image_folder}{image_id}",
                None,
                split=source.split,
                problem=MISSING_IMAGE,
                detail=f"line {line} of {table} names it; no file {image_id}.* in "
                f"{source.path / source.images}",
            )
        )
    files.sort(key=lambda f: f.path)
    _warn(files, where)
    return Source(source.path, files, None)


def read_label_table(source: TableSource, where: str) -> pd.DataFrame:
    """One row per table row: image_id, label ("" if unusable), lesion_id, line, and the
    problem with the row's label ("" if none). Raises TableSourceError for a table without
    the named columns or rows."""
    path = source.path / source.table
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TableSourceError(f"{where}.table: {path} is not a readable CSV: {e}") from None
    named = [source.id_column, *_label_columns(source)]
    if source.lesion_column is not None:
        named.append(source.lesion_column)
    missing = [c for c in named if c not in table.columns]
    if missing:
        raise TableSourceError(
            f"{where}.table: {path} has no column(s) {missing}, which params name "
            f"(its columns: {list(table.columns)})"
        )
    if table.empty:
        raise TableSourceError(f"{where}.table: {path} has a header but no rows")
    labels, problems = _row_labels(table, source)
    return pd.DataFrame(
        {
            "image_id": table[source.id_column].str.strip(),
            "label": labels,
            "problem": problems,
            "lesion_id": table[source.lesion_column].str.strip() if source.lesion_column else "",
            # The header is line 1.
            "line": table.index + 2,
        }
    )


def _label_columns(source: TableSource) -> list[str]:
    return [source.label_column] if source.label_column is not None else list(source.labels)


def _row_labels(table: pd.DataFrame, source: TableSource) -> tuple[list[str], list[str]]:
    """Each row's label and, where it has none, why (the unknown_label detail)."""
    if source.label_column is not None:
        values = table[source.label_column].str.strip()
        labels = [source.labels.get(v, "") for v in values]
        problems = [
            ""
            if label
            else f"label value {value!r} of column {source.label_column!r} is not in the "
            f"source's labels {sorted(source.labels)}"
            for value, label in zip(values, labels, strict=True)
        ]
        return labels, problems
    marked = table[list(source.labels)].apply(pd.to_numeric, errors="coerce").eq(1)
    labels, problems = [], []
    for columns in marked.itertuples(index=False):
        hit = [column for column, on in zip(source.labels, columns, strict=True) if on]
        labels.append(source.labels[hit[0]] if len(hit) == 1 else "")
        problems.append(
            ""
            if len(hit) == 1
            else f"marks {hit or 'none'} of the one-hot columns {list(source.labels)}: "
            "exactly one must be 1"
        )
    return labels, problems


def _placed(file: SourceFile, rows: pd.DataFrame, table: str, source: TableSource) -> SourceFile:
    """The file with its split, label and lesion from its row(s), or the problem with them."""
    lines = ", ".join(str(n) for n in rows["line"])
    in_table = f"line {lines} of {table}"
    placed = replace(file, split=source.split)
    usable = rows[rows["problem"] == ""]
    if usable.empty:
        return replace(
            placed, problem=UNKNOWN_LABEL, detail=f"{in_table}: {rows['problem'].iloc[0]}"
        )
    if usable["label"].nunique() > 1:
        return replace(
            placed,
            problem=CONFLICTING_LABELS,
            detail=f"{in_table}: listed with labels {sorted(usable['label'].unique())}",
        )
    row = usable.iloc[0]
    if source.lesion_column is not None and not row["lesion_id"]:
        return replace(
            placed,
            label=row["label"],
            problem=MISSING_LESION_ID,
            detail=f"{in_table}: empty {source.lesion_column!r}",
        )
    return replace(placed, label=row["label"], lesion_id=row["lesion_id"])


def _warn(files: list[SourceFile], where: str) -> None:
    """One warning per kind of bad row, naming the first few (the manifest names them all)."""
    table_problems = (
        NOT_IN_TABLE,
        UNKNOWN_LABEL,
        CONFLICTING_LABELS,
        MISSING_LESION_ID,
        MISSING_IMAGE,
    )
    for problem in table_problems:
        bad = [f for f in files if f.problem == problem]
        if bad:
            examples = "; ".join(f"{f.path}: {f.detail}" for f in bad[:EXAMPLES_LOGGED])
            more = f" (and {len(bad) - EXAMPLES_LOGGED} more)" if len(bad) > EXAMPLES_LOGGED else ""
            log.warning("%s: %d file(s) %s: %s%s", where, len(bad), problem, examples, more)
