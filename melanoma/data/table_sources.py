"""A data source published as ISIC does: image folders and the CSV tables that label them.

Each table row names an image of its folder by id (the file name without its suffix), gives
its label (one column of values, or one-hot columns, mapped onto the nine labels by `labels`)
and its lesion, where the table or a metadata CSV joined by id has one. ISIC 2016-2018 and
HAM10000 publish one folder and table per split, ISIC 2019-2020 a ground truth and a metadata
CSV. Every file of the source's folder becomes one `SourceFile`, and so does every table row
whose image is missing, so nothing goes unaccounted for:

    label_table          a label table or the metadata CSV (read as labels, not as an image)
    not_in_table         a file that no table row names as an image of the image folder
                         (README, checksums, stray images)
    unknown_label        its row's label value (or marked one-hot column) is not in `labels`,
                         or the row marks no one-hot column or several
    conflicting_labels   the id is listed twice, with two labels
    missing_lesion_id    the source has a lesion column and the row's cell is empty (or the
                         metadata has no row for it): without it the image's other
                         photographs could end up on both sides of a split
    missing_image        a table row whose image file is not in the folder (never read)

A table without the named columns or with no rows, or a metadata CSV that shares no id with
a table, cannot be used at all: TableSourceError, before any image is read.
"""

import logging
import posixpath
from dataclasses import replace

import pandas as pd

from melanoma.data.sources import Source, SourceError, SourceFile, walk_directory
from melanoma.params.data import TablePart, TableSource

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
    """Every file of the image folders, and every table row without one, placed by the tables.

    `param` is the source's place in params.yaml (`data.sources[1]`), for the messages.
    """
    where = f"{param} ({source.name})"
    if not source.path.is_dir():
        raise TableSourceError(f"{where}.path: {source.path} is not a directory")
    lesions = read_lesion_metadata(source, where)
    parts = []
    for n, part in enumerate(source.layout):
        at = f"{where}.parts[{n}]" if source.parts else where
        folder = source.path / part.images
        if not folder.is_dir():
            raise TableSourceError(f"{at}.images: {folder} is not a directory")
        rows = read_label_table(source, part, lesions, at)
        images = part.images.as_posix().strip("/")
        prefix = "" if images in ("", ".") else f"{images}/"
        by_id = {image_id: row for image_id, row in rows.groupby("image_id", sort=False)}
        parts.append((prefix, part, by_id))
    # A file belongs to the part with the deepest image folder holding it.
    parts.sort(key=lambda entry: -len(entry[0]))
    tables = {part.table.as_posix() for part in source.layout}
    if source.metadata is not None:
        tables.add(source.metadata.as_posix())
    files = []
    listed: set[tuple[str, str]] = set()
    for file in walk_directory(source.path):
        if file.problem:
            files.append(file)
            continue
        if file.path in tables:
            files.append(replace(file, problem=LABEL_TABLE, detail="a label table of the source"))
            continue
        prefix, file_part, by_id = next(
            (entry for entry in parts if file.path.startswith(entry[0])), ("", None, {})
        )
        stem, _ = posixpath.splitext(file.path.removeprefix(prefix))
        if file_part is None or "/" in stem or stem not in by_id:
            named = file_part.table.as_posix() if file_part is not None else "the source's tables"
            files.append(replace(file, problem=NOT_IN_TABLE, detail=f"no row of {named} names it"))
        else:
            listed.add((prefix, stem))
            files.append(_placed(file, by_id[stem], file_part, source))
    files += [
        _missing_image(prefix, part, image_id, by_id[image_id], source)
        for prefix, part, by_id in parts
        for image_id in sorted(set(by_id) - {stem for p, stem in listed if p == prefix})
    ]
    files.sort(key=lambda f: f.path)
    _warn(files, where)
    return Source(source.path, files, None)


def _missing_image(
    prefix: str, part: TablePart, image_id: str, rows: pd.DataFrame, source: TableSource
) -> SourceFile:
    """A table row whose image is not in its part's folder: accounted for, never read."""
    line = int(rows["line"].iloc[0])
    return SourceFile(
        f"{prefix}{image_id}",
        None,
        split=part.split or source.split,
        problem=MISSING_IMAGE,
        detail=f"line {line} of {part.table.as_posix()} names it; no file {image_id}.* in "
        f"{source.path / part.images}",
    )


def read_lesion_metadata(source: TableSource, where: str) -> pd.Series | None:
    """Each image id's lesion id from the source's metadata CSV (None without one).

    Raises TableSourceError for a CSV without id_column or lesion_column, or one whose ids
    name no image of the label tables (it does not join)."""
    if source.metadata is None:
        return None
    path = source.path / source.metadata
    table = _read_csv(path, f"{where}.metadata")
    missing = [c for c in (source.id_column, source.lesion_column) if c not in table.columns]
    if missing:
        raise TableSourceError(
            f"{where}.metadata: {path} has no column(s) {missing}, which params name "
            f"(its columns: {list(table.columns)})"
        )
    ids = table[source.id_column].str.strip()
    lesions = table[source.lesion_column].str.strip()
    # An id listed twice keeps its first lesion cell that is not empty.
    return lesions.where(lesions != "").groupby(ids.to_numpy(), sort=False).first()


def read_label_table(
    source: TableSource, part: TablePart, lesions: pd.Series | None, where: str
) -> pd.DataFrame:
    """One row per table row: image_id, label ("" if unusable), lesion_id, line, and the
    problem with the row's label ("" if none). Raises TableSourceError for a table without
    the named columns or rows, or one that shares no id with the metadata CSV."""
    path = source.path / part.table
    table = _read_csv(path, f"{where}.table")
    named = [source.id_column, *_label_columns(source)]
    if source.lesion_column is not None and lesions is None:
        named.append(source.lesion_column)
    missing = [c for c in named if c not in table.columns]
    if missing:
        raise TableSourceError(
            f"{where}.table: {path} has no column(s) {missing}, which params name "
            f"(its columns: {list(table.columns)})"
        )
    if table.empty:
        raise TableSourceError(f"{where}.table: {path} has a header but no rows")
    ids = table[source.id_column].str.strip()
    if lesions is not None and source.metadata is not None:
        if not ids.isin(lesions.index).any():
            raise TableSourceError(
                f"{where}.metadata: {source.path / source.metadata} does not join {path}: "
                f"no value of column {source.id_column!r} is in both"
            )
        lesion_ids = ids.map(lesions).fillna("")
    elif source.lesion_column is not None:
        lesion_ids = table[source.lesion_column].str.strip()
    else:
        lesion_ids = pd.Series("", index=table.index)
    labels, problems = _row_labels(table, source)
    return pd.DataFrame(
        {
            "image_id": ids,
            "label": labels,
            "problem": problems,
            "lesion_id": lesion_ids,
            # The header is line 1.
            "line": table.index + 2,
        }
    )


def _read_csv(path, where: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TableSourceError(f"{where}: {path} is not a readable CSV: {e}") from None


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
        if not hit and source.unmarked_label is not None:
            labels.append(source.unmarked_label)
            problems.append("")
            continue
        labels.append(source.labels[hit[0]] if len(hit) == 1 else "")
        problems.append(
            ""
            if len(hit) == 1
            else f"marks {hit or 'none'} of the one-hot columns {list(source.labels)}: "
            "exactly one must be 1"
        )
    return labels, problems


def _placed(
    file: SourceFile, rows: pd.DataFrame, part: TablePart, source: TableSource
) -> SourceFile:
    """The file with its split, label and lesion from its row(s), or the problem with them."""
    lines = ", ".join(str(n) for n in rows["line"])
    in_table = f"line {lines} of {part.table.as_posix()}"
    placed = replace(file, split=part.split or source.split)
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
            detail=f"{in_table}: empty {source.lesion_column!r}"
            + (f" (or no row of {source.metadata.as_posix()})" if source.metadata else ""),
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
