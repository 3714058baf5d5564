"""The benchmark's view of the data sources: the collection's Train/Test folders and labels,
tiny subsets of each source."""

import hashlib
import logging
from collections import Counter
from pathlib import Path, PurePosixPath

import pandas as pd

from melanoma.data.sources import open_source
from melanoma.data.table_sources import read_label_table, read_lesion_metadata
from melanoma.labels import LABELS, canonical_label
from melanoma.params.data import DataSource, FolderSource, TableSource

log = logging.getLogger(__name__)


def split_folder(source: Path, split: str) -> Path:
    """The folder holding the class folders of `split` (train | test) in a directory source,
    found by the project's own layout rules (so a wrapping top folder is handled too)."""
    if not source.is_dir():
        raise ValueError(
            f"the benchmark needs a directory source (the common recipe reads class folders); "
            f"{source} is not a directory"
        )
    with open_source(source) as opened:
        placed = [f for f in opened.files if f.split == split and f.label and not f.problem]
    if not placed:
        raise ValueError(f"{source} has no {split} image in <split>/<class>/ folders")
    return source / PurePosixPath(placed[0].path).parent.parent


def label_index(source_path: str) -> int:
    """The label (LABELS index) of a source file, from its class folder's name."""
    label = canonical_label(PurePosixPath(source_path).parent.name)
    if label is None:
        raise ValueError(f"{source_path}: its folder is not one of the nine class folders")
    return LABELS.index(label)


def tiny_source(source: Path, destination: Path, per_split: dict[str, int]) -> Path:
    """Copy `per_split[split]` real files per label and split from `source` into `destination`,
    in the same layout, and return `destination`.

    The first files in path order are taken, skipping any whose bytes equal a file already
    taken, so that validate finds no duplicate, leak or label conflict to drop.
    """
    taken: Counter[tuple[str, str]] = Counter()
    taken_hashes: set[str] = set()
    with open_source(source) as opened:
        for file in opened.files:
            place = (file.split, file.label)
            if file.problem or not file.label or taken[place] >= per_split.get(file.split, 0):
                continue
            data = opened.read(file)
            digest = hashlib.sha256(data).hexdigest()
            if digest not in taken_hashes:
                taken[place] += 1
                taken_hashes.add(digest)
                target = destination / file.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    short = {
        f"{split}/{label}": taken[(split, label)]
        for split, wanted in per_split.items()
        for label in LABELS
        if taken[(split, label)] < wanted
    }
    if short:
        raise ValueError(f"{source} lacks enough distinct files for the tiny source: {short}")
    log.info("tiny source: %d files copied to %s", sum(taken.values()), destination)
    return destination


def tiny_external_set(folder: Path, destination: Path, per_class: int) -> Path:
    """Copy the first `per_class` files (in name order) of each class folder of an external set
    into `destination`, in the same <class>/<image> layout; return `destination`."""
    for class_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(p for p in class_folder.iterdir() if p.is_file())[:per_class]:
            target = destination / class_folder.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return destination


def tiny_table_source(source: TableSource, destination: Path, per_label: int) -> TableSource:
    """Copy, from each image folder and table of a table source, the first `per_label` usable
    rows per label (in table order, one image per lesion so that nothing is grouped away) and
    their images into `destination`, laid out as the source is (its metadata CSV whole); return
    the copy's params."""
    lesions = read_lesion_metadata(source, source.name)
    if source.metadata is not None:
        (destination / source.metadata).parent.mkdir(parents=True, exist_ok=True)
        (destination / source.metadata).write_bytes((source.path / source.metadata).read_bytes())
    copied = 0
    for part in source.layout:
        rows = read_label_table(source, part, lesions, source.name)
        usable = rows[rows["problem"] == ""]
        usable = usable[(usable["lesion_id"] == "") | ~usable["lesion_id"].duplicated()]
        chosen = usable.groupby("label", sort=False).head(per_label)
        table = pd.read_csv(source.path / part.table, dtype=str, keep_default_na=False)
        (destination / part.table).parent.mkdir(parents=True, exist_ok=True)
        table.iloc[chosen.index].to_csv(destination / part.table, index=False)
        images = destination / part.images
        images.mkdir(parents=True, exist_ok=True)
        for image_id in chosen["image_id"]:
            [path] = (source.path / part.images).glob(f"{image_id}.*")
            (images / path.name).write_bytes(path.read_bytes())
        copied += len(chosen)
    log.info("tiny table source: %d images copied to %s", copied, destination)
    return source.model_copy(update={"path": destination})


def tiny_sources(
    data_sources: list[DataSource], destination: Path, per_split: dict[str, int]
) -> list[DataSource]:
    """A tiny copy of each source in destination/<name>: `per_split` files per label and split
    of a folders source, per_split["train"] images per label of a table source."""
    tiny: list[DataSource] = []
    for source in data_sources:
        folder = destination / source.name
        if isinstance(source, FolderSource):
            tiny.append(
                source.model_copy(update={"path": tiny_source(source.path, folder, per_split)})
            )
        else:
            tiny.append(tiny_table_source(source, folder, per_split["train"]))
    return tiny
