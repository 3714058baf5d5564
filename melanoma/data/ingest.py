"""The ingest stage: every source file decoded to one canonical RGB image, and one manifest row.

Output (under the output directory, wiped first):
    images/<split>/<label>/<image_id>.<png|jpg>   accepted images, square, ingest.image_size px
    manifest.csv                                   one row per source file (INGEST_COLUMNS)

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
"""

import hashlib
import logging
import re
import shutil
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from melanoma.data import images, sources
from melanoma.config import IngestParams
from melanoma.data.manifest import ACCEPTED, INGEST_COLUMNS, REJECTED, write_manifest

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
MANIFEST_FILE = "manifest.csv"
EXTENSIONS = {"png": "png", "jpeg": "jpg"}
# Never read: refusing these is the point.
NOT_READ = (sources.SYMLINK_OUTSIDE_SOURCE, sources.UNSAFE_ZIP_PATH, sources.NOT_A_REGULAR_FILE)
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


def ingest(source_location: Path, output_dir: Path, params: IngestParams) -> pd.DataFrame:
    """Ingest every file of the source into output_dir; return the manifest it wrote."""
    with sources.open_source(source_location) as source:
        _refuse_overlap(source_location, output_dir)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        names = OutputNames()
        rows = [
            ingest_file(source, file, output_dir, params, names)
            for file in tqdm(source.files, desc="ingest", unit="file")
        ]
    # source.files is already in source_path order; the manifest keeps it.
    manifest = pd.DataFrame(rows, columns=INGEST_COLUMNS)
    write_manifest(manifest, output_dir / MANIFEST_FILE, INGEST_COLUMNS)
    return manifest


def _refuse_overlap(source_location: Path, output_dir: Path) -> None:
    source, output = source_location.resolve(), output_dir.resolve()
    if output.is_relative_to(source) or source.is_relative_to(output):
        raise sources.SourceError(
            f"the data source '{source_location}' and the output '{output_dir}' overlap: "
            f"ingest would overwrite its own input. {sources.FIX_HINT}"
        )


def ingest_file(
    source: sources.Source,
    file: sources.SourceFile,
    output_dir: Path,
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
    image_path = output_dir / IMAGES_DIR / file.split / file.label / f"{image_id}.{extension}"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    image_path.write_bytes(images.encode(canonical, params.image_format, params.jpeg_quality))
    row.update(
        image_id=image_id,
        pixel_sha256=images.pixel_sha256(rgb),
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
    """The counts a run reports: accepted, rejected by reason, accepted per split and label."""
    status = Counter(manifest["status"])
    lines = [
        f"{len(manifest)} source files: {status[ACCEPTED]} accepted, {status[REJECTED]} rejected"
    ]
    rejected = manifest[manifest["status"] == REJECTED]
    for reason, count in sorted(Counter(rejected["reason"]).items()):
        examples = ", ".join(rejected.loc[rejected["reason"] == reason, "source_path"].head(3))
        lines.append(f"  rejected {reason}: {count} (e.g. {examples})")
    accepted = manifest[manifest["status"] == ACCEPTED]
    for (split, label), count in accepted.groupby(["split", "label"]).size().items():
        lines.append(f"  accepted {split}/{label}: {count}")
    return lines
