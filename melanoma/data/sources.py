"""Reading the ISIC collection as it comes: a directory or a .zip archive, read in place.

The layout is `<split>/<class>/<file>` with split `Train` or `Test` (any case) and class a folder
name that `melanoma.labels.canonical_label` knows. A user's download often wraps this in one top
folder ("Skin cancer ISIC The International Skin Imaging Collaboration"): when the root holds no
Train/Test folder but exactly one sub-folder that does, that sub-folder is the data root.

Every file of the source, wherever it lies, becomes one `SourceFile`; directories do not.
Nothing is extracted to disk, no symlink is followed out of the source, and zip member names are
never used as paths to write to.
"""

import os
import posixpath
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from melanoma.errors import MelanomaError
from melanoma.labels import LABELS, canonical_label

SPLITS = {"train": "train", "test": "test"}  # folder name, lower-cased -> split

# Rejection codes decided by where a file is, before its bytes are read (see melanoma.data.ingest).
OUTSIDE_CLASS_FOLDER = "outside_class_folder"
UNKNOWN_CLASS = "unknown_class"
SYMLINK_OUTSIDE_SOURCE = "symlink_outside_source"
UNSAFE_ZIP_PATH = "unsafe_zip_path"
NOT_A_REGULAR_FILE = "not_a_regular_file"
UNREADABLE = "unreadable"

FIX_HINT = (
    "Set the path of this `folders` source in params.yaml data.sources to a directory or .zip "
    "archive laid out as Train/<class>/<image> and Test/<class>/<image>."
)


class SourceError(MelanomaError):
    """The source cannot be ingested at all; the message names the path and the fix."""


class SourceNotFoundError(SourceError):
    pass


class EmptySourceError(SourceError):
    pass


class NoClassFolderError(SourceError):
    pass


@dataclass(frozen=True)
class SourceFile:
    """One file of the source and what its place in the layout says about it."""

    path: str  # POSIX, relative to the source root (directory) or the zip member name
    size: int | None  # bytes, as the file system or zip directory says; None if not a file
    split: str = ""  # train | test, empty outside the layout
    label: str = ""  # canonical label, empty outside the layout
    problem: str = ""  # a rejection code when the file must not be (or need not be) decoded
    detail: str = ""
    lesion_id: str = ""  # the lesion photographed, where the source says (table sources)
    # A zip may hold two members of one name: each row reads its own.
    member: zipfile.ZipInfo | None = field(default=None, compare=False, repr=False)

    @property
    def stem(self) -> str:
        return posixpath.splitext(posixpath.basename(self.path))[0] or posixpath.basename(self.path)


class Source:
    """An opened source: list its files, read one file's bytes. Use as a context manager."""

    def __init__(self, location: Path, files: list[SourceFile], archive: zipfile.ZipFile | None):
        self.location = location
        self.files = files
        self._archive = archive

    def read(self, file: SourceFile) -> bytes:
        """The file's bytes; OSError (or a zipfile error) if they cannot be read."""
        if self._archive is not None and file.member is not None:
            return self._archive.read(file.member)
        return (self.location / file.path).read_bytes()

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_source(location: Path) -> Source:
    """Open a directory or .zip source and place every file in the layout.

    Raises a SourceError subclass if the source is missing, holds no file, or has no
    `<split>/<class>/` folder with a known class.
    """
    described = _describe(location)
    if not location.exists():
        raise SourceNotFoundError(f"the data source {described} does not exist. {FIX_HINT}")
    archive = None
    try:
        try:
            if location.is_dir():
                entries = list(walk_directory(location))
            elif zipfile.is_zipfile(location):
                archive = zipfile.ZipFile(location)
                entries = list(_zip_entries(archive))
            else:
                raise SourceError(
                    f"the data source {described} is neither a directory nor a .zip archive. "
                    + FIX_HINT
                )
        except (OSError, zipfile.BadZipFile) as error:
            # A folder we cannot list hides files we cannot account for: stop, don't guess.
            raise SourceError(f"the data source {described} cannot be read: {error}") from None
        files = _checked_layout(entries, described)
    except SourceError:
        if archive is not None:
            archive.close()
        raise
    return Source(location, sorted(files, key=lambda f: f.path), archive)


def _checked_layout(entries: list[SourceFile], described: str) -> list[SourceFile]:
    if not entries:
        raise EmptySourceError(f"the data source {described} holds no file. {FIX_HINT}")
    files = place_in_layout(entries)
    if not any(f.label and not f.problem for f in files):
        raise NoClassFolderError(
            f"the data source {described} has no recognisable class folder: found no file at "
            f"Train/<class>/ or Test/<class>/ with <class> one of {', '.join(LABELS)} "
            f"(spaces, case, '-' and '_' don't matter). {FIX_HINT}"
        )
    return files


def _describe(location: Path) -> str:
    resolved = location.resolve()
    return f"'{location}'" if resolved == location else f"'{location}' (resolved: {resolved})"


def walk_directory(root: Path) -> Iterator[SourceFile]:
    """Every non-directory entry under root, without entering symlinked directories."""
    real_root = Path(os.path.realpath(root))
    pending = [root]
    while pending:
        folder = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                    continue
                relative = Path(entry.path).relative_to(root).as_posix()
                yield _directory_file(relative, Path(entry.path), real_root)


def _directory_file(relative: str, path: Path, real_root: Path) -> SourceFile:
    if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(real_root):
        return SourceFile(
            relative,
            None,
            problem=SYMLINK_OUTSIDE_SOURCE,
            detail=f"symlink to {os.readlink(path)}, outside the source: not followed",
        )
    try:
        info = path.stat()
    except OSError as error:
        return SourceFile(
            relative, None, problem=NOT_A_REGULAR_FILE, detail=f"cannot stat: {error}"
        )
    if not stat.S_ISREG(info.st_mode):
        # A FIFO would block the read; a symlinked directory would count its files twice.
        kind = "symlink to a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return SourceFile(relative, None, problem=NOT_A_REGULAR_FILE, detail=f"{kind}: not read")
    return SourceFile(relative, info.st_size)


def _zip_entries(archive: zipfile.ZipFile) -> Iterator[SourceFile]:
    for info in archive.infolist():
        if info.is_dir():
            continue
        file = SourceFile(info.filename, info.file_size, member=info)
        if _unsafe_member_name(info.filename):
            yield replace(
                file,
                problem=UNSAFE_ZIP_PATH,
                detail="absolute path or '..' in the member name: refused",
            )
        elif stat.S_ISLNK(info.external_attr >> 16):
            yield _zip_symlink(file, archive.read(info).decode("utf-8", "replace"))
        else:
            yield file


def _unsafe_member_name(name: str) -> bool:
    absolute = name.startswith(("/", "\\")) or name[1:2] == ":"  # "/x", "\\x", "C:x"
    return absolute or ".." in name.replace("\\", "/").split("/")


def _zip_symlink(file: SourceFile, target: str) -> SourceFile:
    """Symlinks stored in a zip are never followed; those leaving the archive are named so."""
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(file.path), target))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        return replace(
            file,
            size=None,
            problem=SYMLINK_OUTSIDE_SOURCE,
            detail=f"symlink to {target}, outside the archive: not followed",
        )
    return replace(
        file, size=None, problem=NOT_A_REGULAR_FILE, detail=f"symlink to {target}: not followed"
    )


def place_in_layout(files: list[SourceFile]) -> list[SourceFile]:
    """Give each file its split and label, or the reason it lies outside `<split>/<class>/`."""
    prefix = _data_root(files)
    return [file if file.problem else _place(file, prefix) for file in files]


def _place(file: SourceFile, prefix: list[str]) -> SourceFile:
    parts = file.path.split("/")
    if parts[: len(prefix)] != prefix:
        return replace(
            file, problem=OUTSIDE_CLASS_FOLDER, detail=f"outside the data folder {prefix[0]}/"
        )
    parts = parts[len(prefix) :]
    split = SPLITS.get(parts[0].lower())
    if split is None or len(parts) != 3:
        return replace(
            file,
            problem=OUTSIDE_CLASS_FOLDER,
            detail="not at Train/<class>/<file> or Test/<class>/<file>",
        )
    label = canonical_label(parts[1])
    if label is None:
        return replace(
            file,
            split=split,
            problem=UNKNOWN_CLASS,
            detail=f"class folder '{parts[1]}' is not one of the nine labels",
        )
    return replace(file, split=split, label=label)


def _data_root(files: list[SourceFile]) -> list[str]:
    """[] if the root holds Train/Test, else [top] for the one top folder that does."""
    paths = [f.path.split("/") for f in files if not f.problem]

    def holds_split_folder(parts_list: list[list[str]]) -> bool:
        return any(len(parts) > 1 and parts[0].lower() in SPLITS for parts in parts_list)

    if holds_split_folder(paths):
        return []
    tops = sorted({parts[0] for parts in paths if len(parts) > 1})
    with_splits = [top for top in tops if holds_split_folder([p[1:] for p in paths if p[0] == top])]
    return with_splits if len(with_splits) == 1 else []
