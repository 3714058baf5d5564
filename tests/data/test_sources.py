import os
import stat
import zipfile
from pathlib import Path

import pytest

from melanoma.data.sources import (
    EmptySourceError,
    NoClassFolderError,
    SourceError,
    SourceFile,
    SourceNotFoundError,
    open_source,
)

TOP = "Skin cancer ISIC The International Skin Imaging Collaboration"


def by_path(location: Path) -> dict[str, SourceFile]:
    with open_source(location) as source:
        return {file.path: file for file in source.files}


def read_all(location: Path) -> dict[str, bytes]:
    with open_source(location) as source:
        return {file.path: source.read(file) for file in source.files if not file.problem}


def test_directory_source_places_every_file(isic_source) -> None:
    files = by_path(isic_source())
    assert len(files) == 27
    melanoma = [f for f in files.values() if f.label == "melanoma"]
    assert sorted(f.split for f in melanoma) == ["test", "train", "train"]
    assert all(not f.problem and f.size > 0 for f in files.values())
    basal = files["Train/basal cell carcinoma/ISIC_0000003.jpg"]
    assert (basal.split, basal.label) == ("train", "basal_cell_carcinoma")


def test_files_come_sorted_by_path(isic_source) -> None:
    with open_source(isic_source()) as source:
        paths = [file.path for file in source.files]
    assert paths == sorted(paths)


def test_split_and_class_folder_names_are_matched_loosely(isic_source, image_bytes) -> None:
    location = isic_source(
        {"TRAIN/Basal-Cell_Carcinoma/a.jpg": image_bytes(1), "test/MELANOMA/b.jpg": image_bytes(2)}
    )
    placed = {path: (f.split, f.label) for path, f in by_path(location).items()}
    assert placed == {
        "TRAIN/Basal-Cell_Carcinoma/a.jpg": ("train", "basal_cell_carcinoma"),
        "test/MELANOMA/b.jpg": ("test", "melanoma"),
    }


def test_files_outside_split_and_class_folders(isic_source, image_bytes) -> None:
    files = by_path(
        isic_source(
            extra={
                "README.md": b"# ISIC\n",
                "SHA256SUMS": b"abc  Train/x.jpg\n",
                "Train/loose.jpg": image_bytes(1),
                "Train/melanoma/deeper/c.jpg": image_bytes(2),
                "Validation/melanoma/d.jpg": image_bytes(3),
            }
        )
    )
    for path in [
        "README.md",
        "SHA256SUMS",
        "Train/loose.jpg",
        "Train/melanoma/deeper/c.jpg",
        "Validation/melanoma/d.jpg",
    ]:
        assert files[path].problem == "outside_class_folder", path
        assert files[path].label == ""


def test_unknown_class_folder_is_named(isic_source, image_bytes) -> None:
    files = by_path(isic_source(extra={"Train/benign moles/x.jpg": image_bytes(1)}))
    unknown = files["Train/benign moles/x.jpg"]
    assert unknown.problem == "unknown_class"
    assert "benign moles" in unknown.detail
    assert unknown.split == "train"


@pytest.mark.parametrize("as_zip", [False, True], ids=["directory", "zip"])
def test_nested_top_folder_is_the_data_root(isic_source, as_zip: bool) -> None:
    files = by_path(isic_source(top_folder=True, as_zip=as_zip))
    assert len(files) == 27
    assert all(path.startswith(f"{TOP}/") for path in files)
    assert all(file.label and not file.problem for file in files.values())


def test_a_file_beside_the_nested_top_folder_is_outside(isic_source) -> None:
    location = isic_source(top_folder=True)
    (location / "notes.txt").write_text("downloaded 2024")
    files = by_path(location)
    assert files["notes.txt"].problem == "outside_class_folder"
    assert sum(1 for f in files.values() if f.label) == 27


def test_zip_source_reads_the_same_bytes_as_the_directory(isic_source) -> None:
    from_directory = read_all(isic_source())
    from_zip = read_all(isic_source(as_zip=True, name="archive"))
    assert from_zip == from_directory


def test_zip_members_with_absolute_or_parent_paths_are_refused(isic_source, image_bytes) -> None:
    unsafe = ["/etc/evil.jpg", "../evil.jpg", "Train/melanoma/../../evil.jpg", "C:/evil.jpg"]
    location = isic_source(as_zip=True, extra=dict.fromkeys(unsafe, image_bytes(1)))
    with zipfile.ZipFile(location) as archive:  # planted as-is
        assert set(unsafe) <= set(archive.namelist())
    files = by_path(location)
    for name in unsafe:
        assert files[name].problem == "unsafe_zip_path", name


def test_zip_duplicate_member_names_each_read_their_own_bytes(isic_source, image_bytes) -> None:
    location = isic_source(as_zip=True)
    with (
        pytest.warns(UserWarning, match="Duplicate name"),
        zipfile.ZipFile(location, "a") as archive,
    ):
        archive.writestr("Train/melanoma/twice.jpg", image_bytes(100))
        archive.writestr("Train/melanoma/twice.jpg", image_bytes(101))
    with open_source(location) as source:
        twins = [source.read(f) for f in source.files if f.path == "Train/melanoma/twice.jpg"]
    assert twins == [image_bytes(100), image_bytes(101)]


def test_zip_symlink_entries_are_not_followed(isic_source) -> None:
    location = isic_source(as_zip=True)
    with zipfile.ZipFile(location, "a") as archive:
        for name, target in [
            ("Train/melanoma/out.jpg", "../../../etc/passwd"),
            ("Train/melanoma/in.jpg", "ISIC_0000009.jpg"),
        ]:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    files = by_path(location)
    assert files["Train/melanoma/out.jpg"].problem == "symlink_outside_source"
    assert files["Train/melanoma/in.jpg"].problem == "not_a_regular_file"


def test_symlink_leading_out_of_the_source_is_refused(isic_source, image_bytes, tmp_path) -> None:
    outside = tmp_path / "private.jpg"
    outside.write_bytes(image_bytes(1))
    location = isic_source()
    (location / "Train/melanoma/link.jpg").symlink_to(outside)
    (location / "Train/melanoma/relative.jpg").symlink_to("../../../private.jpg")
    files = by_path(location)
    for path in ["Train/melanoma/link.jpg", "Train/melanoma/relative.jpg"]:
        assert files[path].problem == "symlink_outside_source", path
        assert str(files[path].detail).startswith("symlink to")


def test_symlink_within_the_source_is_read(isic_source) -> None:
    location = isic_source()
    (location / "Train/melanoma/alias.jpg").symlink_to("ISIC_0000009.jpg")
    files = by_path(location)
    assert files["Train/melanoma/alias.jpg"].label == "melanoma"
    assert not files["Train/melanoma/alias.jpg"].problem
    contents = read_all(location)
    assert contents["Train/melanoma/alias.jpg"] == contents["Train/melanoma/ISIC_0000009.jpg"]


def test_symlinked_directory_and_fifo_are_not_entered_or_read(isic_source) -> None:
    location = isic_source()
    (location / "Train/melanoma copy").symlink_to("melanoma", target_is_directory=True)
    os.mkfifo(location / "Train/melanoma/pipe.jpg")  # reading it would block forever
    files = by_path(location)
    assert files["Train/melanoma copy"].problem == "not_a_regular_file"
    assert files["Train/melanoma/pipe.jpg"].problem == "not_a_regular_file"
    assert not any(path.startswith("Train/melanoma copy/") for path in files)


def test_missing_source_names_the_path_and_the_fix(tmp_path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SourceNotFoundError, match="does not exist") as caught:
        open_source(missing)
    assert str(missing) in str(caught.value)
    assert "data.source" in str(caught.value)


def test_relative_source_path_is_shown_resolved(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceNotFoundError) as caught:
        open_source(Path("../elsewhere/isic"))
    assert "'../elsewhere/isic'" in str(caught.value)
    assert str(tmp_path.parent / "elsewhere/isic") in str(caught.value)


@pytest.mark.parametrize("as_zip", [False, True], ids=["directory", "zip"])
def test_empty_source_names_the_path_and_the_fix(isic_source, as_zip: bool) -> None:
    location = isic_source({}, as_zip=as_zip)
    with pytest.raises(EmptySourceError, match="holds no file") as caught:
        open_source(location)
    assert str(location) in str(caught.value)
    assert "data.source" in str(caught.value)


def test_source_without_class_folder_names_the_path_and_the_fix(isic_source, image_bytes) -> None:
    location = isic_source({"photos/a.jpg": image_bytes(1), "Train/moles/b.jpg": image_bytes(2)})
    with pytest.raises(NoClassFolderError, match="no recognisable class folder") as caught:
        open_source(location)
    assert str(location) in str(caught.value)
    assert "data.source" in str(caught.value)


def test_two_candidate_top_folders_are_not_guessed_between(isic_source, image_bytes) -> None:
    location = isic_source(
        {
            "copy one/Train/melanoma/a.jpg": image_bytes(1),
            "copy two/Train/melanoma/a.jpg": image_bytes(1),
        }
    )
    with pytest.raises(NoClassFolderError):
        open_source(location)


def test_a_file_that_is_not_a_zip_is_refused(tmp_path) -> None:
    not_zip = tmp_path / "isic.zip"
    not_zip.write_text("not really a zip")
    with pytest.raises(SourceError, match="neither a directory nor a .zip") as caught:
        open_source(not_zip)
    assert str(not_zip) in str(caught.value)


def test_a_folder_that_cannot_be_listed_stops_with_its_name(isic_source, monkeypatch) -> None:
    location = isic_source()
    real_scandir = os.scandir

    def refusing_scandir(path):
        if Path(path).name == "nevus":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    # chmod would not stop root, whom the tests may run as.
    monkeypatch.setattr(os, "scandir", refusing_scandir)
    with pytest.raises(SourceError, match="cannot be read") as caught:
        open_source(location)
    assert "nevus" in str(caught.value)
