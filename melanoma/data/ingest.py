"""The ingest stage: every file of every data source decoded to one canonical RGB image, and
one manifest row.

Output (under the output directory, wiped first):
    images/<source>/<split>/<label>/<image_id>.<png|jpg>   accepted images, square,
                                                           ingest.image_size px
    manifest.csv        one row per file of every source (INGEST_COLUMNS), in source order
    sources.json        per source: its params, file counts and a hash of its content

`image_id` is the file's stem with any character outside `A-Z a-z 0-9 . _ - ( ) +` replaced by
`_`. Two accepted files that would get the same name in one split/label folder (`x.jpg` and
`x.png`, or class folders `Melanoma` and `melanoma`), compared case-insensitively, are told apart
deterministically: in source_path order the first keeps the name, the next get `__2`, `__3`, ...

Rejection codes in the `reason` column (the `detail` column explains each case):
    empty_file             0 bytes
    truncated              the image data ends early
    corrupt                looks like an image format but cannot be decoded
    not_an_image           no supported image format (.DS_Store, Thumbs.db, text, ...)
    unsupported_mode       decodes, but its pixels have no RGB meaning (32-bit float)
    decompression_bomb     more pixels than ingest.max_image_pixels, or a file too large to be
                           an image within that limit (never decoded)
    unknown_class          the class folder is not one of the nine labels (it is named)
    outside_class_folder   not at <split>/<class>/<file> (README.md, SHA256SUMS, deeper files)
    symlink_outside_source a symlink leading out of the source (never followed)
    unsafe_zip_path        zip member with an absolute or `..` path (never read)
    not_a_regular_file     symlink to a directory, dangling symlink, symlink inside a zip,
                           FIFO, socket or device (not read)
    unreadable             the bytes could not be read (permissions, bad zip data, encryption)
A table source adds its own codes (melanoma.data.table_sources): not_in_table, unknown_label,
conflicting_labels, missing_lesion_id, missing_image.

Each accepted image also gets a perceptual hash (pHash of the canonical image), which validate
uses to find resized or re-encoded copies of one picture.
"""

import hashlib
import json
import logging
import re
import shutil
import zipfile
import zlib
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import imagehash
import pandas as pd
from tqdm import tqdm

from melanoma.data import images, sources
from melanoma.data.manifest import (
    ACCEPTED,
    INGEST_COLUMNS,
    REJECTED,
    write_manifest,
)
from melanoma.data.table_sources import MISSING_IMAGE, open_table_source
from melanoma.params.data import DataSource, FolderSource, IngestParams, TableSource

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
MANIFEST_FILE = "manifest.csv"
SOURCES_FILE = "sources.json"  # written beside the manifest
EXTENSIONS = {"png": "png", "jpeg": "jpg"}
# Never read: refusing these is the point.
NOT_READ = (
    sources.SYMLINK_OUTSIDE_SOURCE,
    sources.UNSAFE_ZIP_PATH,
    sources.NOT_A_REGULAR_FILE,
    MISSING_IMAGE,
)
# 16-bit RGBA, the widest pixel we decode, plus room for metadata.
MAX_BYTES_PER_PIXEL, METADATA_BYTES = 8, 64 * 2**20
READ_ERRORS = (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error)


class OutputNames:
    """Unique, file-system-safe image ids within each split/label folder, in call order."""

    def __init__(self) -> None:
        self._taken: set[tuple[str, str, str]] = set()

    def allocate(self, split: str, label: str, stem: str) -> str:
        base = safe_stem(stem)
        candidate, n = base, 1
        while (split, label, candidate.casefold()) in self._taken:
            n += 1
            candidate = f"{base}__{n}"
        self._taken.add((split, label, candidate.casefold()))
        return candidate


def safe_stem(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._()+-]", "_", stem).lstrip(".")[:150]
    return cleaned or "image"


def ingest(data_sources: list[DataSource], output_dir: Path, params: IngestParams) -> pd.DataFrame:
    """Ingest every file of every source into output_dir; return the manifest it wrote."""
    check_source_paths(data_sources)
    manifests = []
    with ExitStack() as stack:
        # Every source is opened (and its table checked) before the output is touched.
        opened = [
            stack.enter_context(open_data_source(data_source, f"data.sources[{index}]"))
            for index, data_source in enumerate(data_sources)
        ]
        for data_source in data_sources:
            _refuse_overlap(data_source.path, output_dir)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        for data_source, source in zip(data_sources, opened, strict=True):
            images_dir = output_dir / IMAGES_DIR / data_source.name
            names = OutputNames()
            rows = [
                ingest_file(source, file, images_dir, params, names)
                for file in tqdm(source.files, desc=f"ingest {data_source.name}", unit="file")
            ]
            manifest = pd.DataFrame(rows, columns=INGEST_COLUMNS)
            manifests.append(manifest.assign(source=data_source.name))
    # Each source's files are already in source_path order; the manifest keeps it.
    manifest = pd.concat(manifests, ignore_index=True)
    write_manifest(manifest, output_dir / MANIFEST_FILE, INGEST_COLUMNS)
    summary = sources_summary(data_sources, manifest)
    (output_dir / SOURCES_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return manifest


def check_source_paths(data_sources: list[DataSource]) -> None:
    """Stop before any work if a path of data.sources does not exist, naming the param."""
    for index, source in enumerate(data_sources):
        paths = {"path": source.path}
        if isinstance(source, TableSource):
            for n, part in enumerate(source.layout):
                at = f"parts[{n}]." if source.parts else ""
                paths |= {f"{at}images": source.path / part.images}
                paths |= {f"{at}table": source.path / part.table}
            if source.metadata is not None:
                paths |= {"metadata": source.path / source.metadata}
        for field, path in paths.items():
            if not path.exists():
                raise sources.SourceNotFoundError(
                    f"data.sources[{index}].{field} ({source.name}): {path} does not exist "
                    f"(resolved: {path.resolve()})"
                )


def open_data_source(data_source: DataSource, param: str) -> sources.Source:
    """The source's files, each placed in its split and label or given its problem."""
    if isinstance(data_source, FolderSource):
        return sources.open_source(data_source.path)
    return open_table_source(data_source, param)


def sources_summary(data_sources: list[DataSource], manifest: pd.DataFrame) -> list[dict]:
    """What each source is and what it gave: for the runs' provenance and the model card.

    `sha256` hashes every file's path and content hash, so it changes exactly when a file of
    the source is added, removed or altered.
    """
    summary = []
    for data_source in data_sources:
        rows = manifest[manifest["source"] == data_source.name].sort_values("source_path")
        digest = hashlib.sha256()
        for path, file_hash in zip(rows["source_path"], rows["file_sha256"], strict=True):
            digest.update(f"{path}\t{file_hash}\n".encode())
        rejected = rows[rows["status"] == REJECTED]
        summary.append(
            {
                **data_source.model_dump(mode="json"),
                "sha256": digest.hexdigest(),
                "files": len(rows),
                "accepted": int((rows["status"] == ACCEPTED).sum()),
                "rejected": {str(k): int(v) for k, v in Counter(rejected["reason"]).items()},
            }
        )
    return summary


def _refuse_overlap(source_location: Path, output_dir: Path) -> None:
    source, output = source_location.resolve(), output_dir.resolve()
    if output.is_relative_to(source) or source.is_relative_to(output):
        raise sources.SourceError(
            f"the data source '{source_location}' and the output '{output_dir}' overlap: "
            "ingest would overwrite its own input. Set the source's path in params.yaml "
            "data.sources to a folder outside the project's data/ingested."
        )


def ingest_file(
    source: sources.Source,
    file: sources.SourceFile,
    images_dir: Path,
    params: IngestParams,
    names: OutputNames,
) -> dict[str, object]:
    """One manifest row; an accepted image is written to disk on the way."""
    row: dict[str, object] = dict.fromkeys(INGEST_COLUMNS, "")
    row.update(
        image_id=safe_stem(file.stem),
        split=file.split,
        label=file.label,
        source_path=file.path,
        source_bytes="" if file.size is None else file.size,
        lesion_id=file.lesion_id,
    )
    if file.problem in NOT_READ:
        return _rejected(row, file.problem, file.detail)
    max_bytes = params.max_image_pixels * MAX_BYTES_PER_PIXEL + METADATA_BYTES
    if file.size is not None and file.size > max_bytes:
        return _rejected(
            row,
            images.DECOMPRESSION_BOMB,
            f"{file.size} bytes: more than any image within ingest.max_image_pixels="
            f"{params.max_image_pixels} can need ({max_bytes}); not read",
        )
    try:
        data = source.read(file)
    except READ_ERRORS as error:
        return _rejected(row, sources.UNREADABLE, f"cannot read: {error}")
    row.update(source_bytes=len(data), file_sha256=hashlib.sha256(data).hexdigest())
    if file.problem:
        return _rejected(row, file.problem, file.detail)

    try:
        original = images.open_image(data, params.max_image_pixels)
        row.update(
            source_format=original.format,
            source_mode=original.mode,
            source_width=original.width,
            source_height=original.height,
        )
        rgb = images.to_rgb(original)
    except images.ImageRejected as rejection:
        return _rejected(row, rejection.reason, str(rejection))

    canonical = images.square_resize(rgb, params.image_size)
    image_id = names.allocate(file.split, file.label, file.stem)
    extension = EXTENSIONS[params.image_format]
    image_path = images_dir / file.split / file.label / f"{image_id}.{extension}"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    image_path.write_bytes(images.encode(canonical, params.image_format, params.jpeg_quality))
    row.update(
        image_id=image_id,
        pixel_sha256=images.pixel_sha256(rgb),
        perceptual_hash=str(imagehash.phash(canonical)),
        image_path=image_path.as_posix(),
        width=canonical.width,
        height=canonical.height,
        channels=len(canonical.getbands()),
        status=ACCEPTED,
    )
    return row


def _rejected(row: dict[str, object], reason: str, detail: str) -> dict[str, object]:
    row.update(status=REJECTED, reason=reason, detail=detail)
    return row


def count_lines(manifest: pd.DataFrame) -> list[str]:
    """The counts a run reports: accepted, rejected by reason, accepted per source, split and
    label."""
    status = Counter(manifest["status"])
    lines = [
        f"{len(manifest)} source files: {status[ACCEPTED]} accepted, {status[REJECTED]} rejected"
    ]
    rejected = manifest[manifest["status"] == REJECTED]
    for reason, count in sorted(Counter(rejected["reason"]).items()):
        examples = ", ".join(rejected.loc[rejected["reason"] == reason, "source_path"].head(3))
        lines.append(f"  rejected {reason}: {count} (e.g. {examples})")
    accepted = manifest[manifest["status"] == ACCEPTED]
    for (source, split, label), count in (
        accepted.groupby(["source", "split", "label"], sort=False).size().items()
    ):
        lines.append(f"  accepted {source} {split}/{label}: {count}")
    return lines
