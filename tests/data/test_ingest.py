import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma import paths
from melanoma.data.images import decode_rgb, square_resize
from melanoma.data.ingest import MANIFEST_FILE, SOURCES_FILE, count_lines, ingest
from melanoma.data.manifest import INGEST_COLUMNS, read_manifest
from melanoma.data.sources import SourceError, SourceNotFoundError
from melanoma.params.data import FolderSource, IngestParams, TableSource
from tests.helpers import table_source_params, write_table_source

OUTPUT = Path("data/ingested")
PARAMS = IngestParams(
    image_size=32, image_format="png", jpeg_quality=95, max_image_pixels=1_000_000
)


def folders(path: Path) -> list[FolderSource]:
    """One `folders` source named isic at path."""
    return [FolderSource(name="isic", kind="folders", path=path)]


@pytest.fixture(autouse=True)
def in_tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a scratch project root: outputs land in tmp_path/data/ingested."""
    monkeypatch.chdir(tmp_path)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def files_in(location: Path) -> int:
    """Every non-directory entry, symlinks included, as the manifest must count them."""
    count = 0
    for folder, dirs, files in os.walk(location):
        count += len(files) + sum(1 for d in dirs if os.path.islink(os.path.join(folder, d)))
    return count


def row(manifest: pd.DataFrame, source_path: str) -> pd.Series:
    matches = manifest[manifest["source_path"] == source_path]
    assert len(matches) == 1, source_path
    return matches.iloc[0]


def all_output_bytes() -> dict[str, bytes]:
    return {
        path.relative_to(OUTPUT).as_posix(): path.read_bytes()
        for path in sorted(OUTPUT.rglob("*"))
        if path.is_file()
    }


def test_clean_source_is_ingested_in_canonical_form(isic_source) -> None:
    manifest = ingest(folders(isic_source()), OUTPUT, PARAMS)
    assert len(manifest) == 27
    assert (manifest["status"] == "accepted").all()
    assert manifest["source_path"].tolist() == sorted(manifest["source_path"])
    for _, accepted in manifest.iterrows():
        written = Image.open(accepted["image_path"])
        assert (written.format, written.mode, written.size) == ("PNG", "RGB", (32, 32))
        assert accepted["image_path"] == (
            f"data/ingested/images/isic/{accepted['split']}/{accepted['label']}/{accepted['image_id']}.png"
        )
    first = row(manifest, "Train/actinic keratosis/ISIC_0000000.jpg")
    assert (first["source_format"], first["source_mode"]) == ("JPEG", "RGB")
    assert (first["source_width"], first["source_height"], first["channels"]) == (16, 16, 3)
    assert len(first["file_sha256"]) == len(first["pixel_sha256"]) == 64
    # The manifest on disk is the one returned, with every column.
    on_disk = read_manifest(OUTPUT / "manifest.csv", INGEST_COLUMNS)
    assert on_disk["source_path"].tolist() == manifest["source_path"].tolist()
    assert list(on_disk.columns) == INGEST_COLUMNS


def test_every_bad_input_gets_its_reason_and_nothing_stops(
    isic_source, image_bytes, tmp_path
) -> None:
    noisy = Image.open(io.BytesIO(image_bytes(500, fmt="PNG")))
    jpeg, png = encoded(noisy, "JPEG"), encoded(noisy, "PNG")
    (tmp_path / "private.jpg").write_bytes(jpeg)
    bad = {
        "Train/melanoma/zero.jpg": ("empty_file", b""),
        "Train/melanoma/cut.jpg": ("truncated", jpeg[: len(jpeg) // 2]),
        "Train/melanoma/cut.png": ("truncated", png[: len(png) // 2]),
        "Train/melanoma/broken.png": ("corrupt", png[:16] + bytes(len(png) - 16)),
        "Train/melanoma/.DS_Store": ("not_an_image", b"\x00\x00\x00\x01Bud1" + bytes(500)),
        "Train/nevus/Thumbs.db": ("not_an_image", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500)),
        "Test/nevus/notes.txt": ("not_an_image", b"looks benign\n"),
        "Train/moles/x.jpg": ("unknown_class", jpeg),
        "README.md": ("outside_class_folder", b"# ISIC\n"),
        "SHA256SUMS": ("outside_class_folder", b"0  README.md\n"),
        "Train/melanoma/bomb.png": (
            "decompression_bomb",
            encoded(Image.new("L", (1500, 1000)), "PNG"),
        ),
    }
    location = isic_source(extra={path: data for path, (_, data) in bad.items()})
    (location / "Train/melanoma/escape.jpg").symlink_to(tmp_path / "private.jpg")

    manifest = ingest(folders(location), OUTPUT, PARAMS)

    assert len(manifest) == files_in(location) == 27 + len(bad) + 1
    for path, (reason, _) in bad.items():
        rejected = row(manifest, path)
        assert (rejected["status"], rejected["reason"]) == ("rejected", reason), path
        assert rejected["detail"], path
        assert rejected["image_path"] == "", path
    escape = row(manifest, "Train/melanoma/escape.jpg")
    assert (escape["status"], escape["reason"]) == ("rejected", "symlink_outside_source")
    assert escape["file_sha256"] == ""  # never read
    assert "moles" in row(manifest, "Train/moles/x.jpg")["detail"]
    assert (manifest["status"] == "accepted").sum() == 27
    written = sorted(p.name for p in (OUTPUT / "images").rglob("*.png"))
    assert len(written) == 27 and "escape.png" not in written


def test_oversized_file_is_refused_without_reading(isic_source) -> None:
    location = isic_source()
    with open(location / "Train/melanoma/huge.jpg", "wb") as sparse:
        sparse.truncate(100 * 2**20)  # 100 MB on paper, no disk used
    refused = row(ingest(folders(location), OUTPUT, PARAMS), "Train/melanoma/huge.jpg")
    assert refused["reason"] == "decompression_bomb"
    assert refused["file_sha256"] == ""
    assert refused["source_bytes"] == 100 * 2**20


def test_other_modes_are_converted_and_recorded(isic_source) -> None:
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    palette = Image.new("P", (20, 20))
    palette.putpalette([0, 128, 0])
    sixteen = Image.frombytes("I;16", (20, 20), np.full((20, 20), 65535, "<u2").tobytes())
    planted = {
        "Train/nevus/gray.png": encoded(Image.new("L", (20, 20), 90), "PNG"),
        "Train/nevus/clear.png": encoded(rgba, "PNG"),
        "Train/nevus/ink.jpg": encoded(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"),
        "Train/nevus/palette.png": encoded(palette, "PNG"),
        "Train/nevus/deep.png": encoded(sixteen, "PNG"),
    }
    manifest = ingest(folders(isic_source(extra=planted)), OUTPUT, PARAMS)
    expected = {  # mode recorded, colour written
        "Train/nevus/gray.png": ("L", (90, 90, 90)),
        "Train/nevus/clear.png": ("RGBA", (255, 255, 255)),
        "Train/nevus/ink.jpg": ("CMYK", (255, 0, 0)),
        "Train/nevus/palette.png": ("P", (0, 128, 0)),
        "Train/nevus/deep.png": ("I;16", (255, 255, 255)),
    }
    for path, (mode, colour) in expected.items():
        converted = row(manifest, path)
        assert (converted["status"], converted["source_mode"]) == ("accepted", mode), path
        centre = Image.open(converted["image_path"]).getpixel((12, 12))
        assert np.allclose(centre, colour, atol=2), (path, centre)


def test_non_square_images_are_centre_cropped(isic_source) -> None:
    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (20, 0, 40, 20))
    manifest = ingest(
        folders(isic_source(extra={"Test/melanoma/wide.png": encoded(wide, "PNG")})), OUTPUT, PARAMS
    )
    cropped = row(manifest, "Test/melanoma/wide.png")
    assert (cropped["source_width"], cropped["source_height"]) == (60, 20)
    assert (
        np.asarray(Image.open(cropped["image_path"])).reshape(-1, 3).tolist()
        == [[0, 0, 255]] * 32 * 32
    )


def test_pixel_hash_finds_the_same_picture_in_another_format(isic_source, image_bytes) -> None:
    picture = Image.open(io.BytesIO(image_bytes(7, fmt="PNG")))
    manifest = ingest(
        folders(
            isic_source(
                extra={
                    "Test/nevus/a.png": encoded(picture, "PNG"),
                    "Train/nevus/b.bmp": encoded(picture, "BMP"),
                }
            )
        ),
        OUTPUT,
        PARAMS,
    )
    a, b = row(manifest, "Test/nevus/a.png"), row(manifest, "Train/nevus/b.bmp")
    assert a["pixel_sha256"] == b["pixel_sha256"]
    assert a["file_sha256"] != b["file_sha256"]
    assert manifest["pixel_sha256"].nunique() == 28  # the 27 defaults all differ


@pytest.mark.parametrize("as_zip", [False, True], ids=["directory", "zip"])
def test_nested_and_zipped_sources_give_the_same_images(isic_source, as_zip: bool) -> None:
    ingest(folders(isic_source()), OUTPUT, PARAMS)
    flat = all_output_bytes()
    ingest(folders(isic_source(top_folder=True, as_zip=as_zip, name="nested")), OUTPUT, PARAMS)
    nested = all_output_bytes()
    # The manifest and the sources summary name the source's path, which differs.
    listing = ("manifest.csv", "sources.json")
    images = {path: data for path, data in flat.items() if path not in listing}
    assert {p: d for p, d in nested.items() if p not in listing} == images
    assert len(images) == 27


def test_unsafe_zip_members_are_refused_and_nothing_is_written_outside(
    isic_source, image_bytes, tmp_path
) -> None:
    unsafe = ["../evil.jpg", "/tmp/evil.jpg", "Train/melanoma/../../../evil.jpg"]
    location = isic_source(as_zip=True, extra=dict.fromkeys(unsafe, image_bytes(9)))
    assert not Path("/tmp/evil.jpg").exists()
    manifest = ingest(folders(location), OUTPUT, PARAMS)
    for name in unsafe:
        refused = row(manifest, name)
        assert (refused["reason"], refused["image_path"]) == ("unsafe_zip_path", ""), name
    assert not Path("/tmp/evil.jpg").exists()
    assert list(tmp_path.parent.rglob("evil*")) == []
    written = {OUTPUT / path for path in all_output_bytes()}
    listings = {OUTPUT / "manifest.csv", OUTPUT / "sources.json"}
    assert written == {Path(p) for p in manifest["image_path"] if p} | listings


def test_two_runs_write_byte_identical_outputs_and_wipe_old_ones(isic_source, image_bytes) -> None:
    location = isic_source(
        extra={"README.md": b"hi\n", "Train/melanoma/cut.jpg": image_bytes(3)[:100]}
    )
    OUTPUT.mkdir(parents=True)
    (OUTPUT / "stale.png").write_bytes(b"from an old run")
    ingest(folders(location), OUTPUT, PARAMS)
    first = all_output_bytes()
    assert "stale.png" not in first
    ingest(folders(location), OUTPUT, PARAMS)
    assert all_output_bytes() == first


def test_jpeg_output_format(isic_source) -> None:
    params = PARAMS.model_copy(update={"image_format": "jpeg", "jpeg_quality": 80})
    manifest = ingest(folders(isic_source()), OUTPUT, params)
    assert manifest["image_path"].str.endswith(".jpg").all()
    assert Image.open(manifest["image_path"].iloc[0]).format == "JPEG"


def test_name_collisions_are_resolved_in_source_order(isic_source, image_bytes) -> None:
    planted = {
        "Train/melanoma/x.jpg": image_bytes(1),
        "Train/melanoma/x.png": image_bytes(2, fmt="PNG"),
        "Train/Melanoma/X.jpg": image_bytes(3),  # another folder of the same label, other case
        "Train/melanoma/x__2.jpg": image_bytes(4),  # a real name the first suffix would take
        "Test/melanoma/x.jpg": image_bytes(5),  # another split: no collision
        "Train/melanoma/we ird#name.jpg": image_bytes(6),
    }
    manifest = ingest(folders(isic_source(extra=planted)), OUTPUT, PARAMS)
    ids = {path: row(manifest, path)["image_id"] for path in planted}
    assert ids == {
        "Train/Melanoma/X.jpg": "X",
        "Train/melanoma/x.jpg": "x__2",
        "Train/melanoma/x.png": "x__3",
        "Train/melanoma/x__2.jpg": "x__2__2",
        "Test/melanoma/x.jpg": "x",
        "Train/melanoma/we ird#name.jpg": "we_ird_name",
    }
    accepted = manifest[manifest["status"] == "accepted"]
    assert accepted["image_path"].str.lower().is_unique
    for path, data in planted.items():  # each name holds its own file's pixels
        expected = square_resize(decode_rgb(data, PARAMS.max_image_pixels), PARAMS.image_size)
        written = Image.open(row(manifest, path)["image_path"])
        assert np.array_equal(np.asarray(written), np.asarray(expected)), path


def test_missing_source_stops_before_touching_the_output(tmp_path) -> None:
    OUTPUT.mkdir(parents=True)
    (OUTPUT / "manifest.csv").write_text("previous run\n")
    with pytest.raises(SourceNotFoundError):
        ingest(folders(tmp_path / "nowhere"), OUTPUT, PARAMS)
    assert (OUTPUT / "manifest.csv").read_text() == "previous run\n"


def test_output_inside_the_source_is_refused(isic_source) -> None:
    location = isic_source()
    with pytest.raises(SourceError, match="overlap"):
        ingest(folders(location), location / "ingested", PARAMS)
    assert not (location / "ingested").exists()


def test_counts_report_accepted_rejected_by_reason_and_per_folder(isic_source) -> None:
    manifest = ingest(
        folders(isic_source(extra={"README.md": b"x", "Train/melanoma/e.jpg": b""})), OUTPUT, PARAMS
    )
    lines = count_lines(manifest)
    assert lines[0] == "29 source files: 27 accepted, 2 rejected"
    assert "  rejected empty_file: 1 (e.g. Train/melanoma/e.jpg)" in lines
    assert "  rejected outside_class_folder: 1 (e.g. README.md)" in lines
    assert "  accepted isic train/melanoma: 2" in lines
    assert "  accepted isic test/vascular_lesion: 1" in lines


def test_two_sources_one_manifest_with_each_file_s_source_and_lesion(
    isic_source, image_bytes, tmp_path
):
    rows = [
        {"lesion_id": "HAM_1", "image_id": "ISIC_0100000", "dx": "mel"},
        {"lesion_id": "HAM_1", "image_id": "ISIC_0100001", "dx": "mel"},
    ]
    images = {f"ISIC_010000{n}.jpg": image_bytes(100 + n, (24, 18)) for n in (0, 1)}
    table = write_table_source(tmp_path / "ham", rows, images)
    sources = [
        *folders(isic_source()),
        TableSource.model_validate(table_source_params(table)),
    ]

    manifest = ingest(sources, OUTPUT, PARAMS)

    assert manifest["source"].value_counts().to_dict() == {"isic": 27, "ham": 3}
    first = manifest.set_index(["source", "source_path"]).loc[("ham", "images/ISIC_0100000.jpg")]
    assert (first["label"], first["lesion_id"], first["split"]) == ("melanoma", "HAM_1", "train")
    assert first["image_path"] == f"{OUTPUT.as_posix()}/images/ham/train/melanoma/ISIC_0100000.png"
    assert len(first["perceptual_hash"]) == 16
    summary = json.loads((OUTPUT / "sources.json").read_text())
    assert [(s["name"], s["files"], s["accepted"]) for s in summary] == [
        ("isic", 27, 27),
        ("ham", 3, 2),
    ]

    # A changed file changes its source's content hash, and only that one.
    (table / "images" / "ISIC_0100001.jpg").write_bytes(image_bytes(999, (24, 18)))
    ingest(sources, OUTPUT, PARAMS)
    again = json.loads((OUTPUT / "sources.json").read_text())
    assert again[0]["sha256"] == summary[0]["sha256"]
    assert again[1]["sha256"] != summary[1]["sha256"]


def test_a_missing_source_path_stops_naming_the_param(isic_source, tmp_path):
    sources = [
        *folders(isic_source()),
        TableSource.model_validate(table_source_params(tmp_path / "nowhere")),
    ]
    with pytest.raises(SourceNotFoundError, match=r"data\.sources\[1\]\.path \(ham\)"):
        ingest(sources, OUTPUT, PARAMS)
    assert not OUTPUT.exists()


def test_a_missing_part_table_or_metadata_stops_naming_its_param(isic_source, tmp_path):
    root = tmp_path / "isic2017"
    (root / "Training").mkdir(parents=True)
    (root / "Training.csv").write_text("image_id,melanoma\n")
    parts = [
        {"images": "Training", "table": "Training.csv"},
        {"images": "Validation", "table": "Validation.csv"},
    ]
    params = table_source_params(root, parts=parts, images=".", table=None)
    collection = folders(isic_source())
    sources = [*collection, TableSource.model_validate(params)]
    with pytest.raises(
        SourceNotFoundError, match=r"data\.sources\[1\]\.parts\[1\]\.images \(ham\)"
    ):
        ingest(sources, OUTPUT, PARAMS)
    metadata = dict(table_source_params(root / "Training"), metadata="lesions.csv")
    (root / "Training" / "metadata.csv").write_text("image_id,dx,lesion_id\n")
    (root / "Training" / "images").mkdir()
    sources = [*collection, TableSource.model_validate(metadata)]
    with pytest.raises(SourceNotFoundError, match=r"data\.sources\[1\]\.metadata \(ham\)"):
        ingest(sources, OUTPUT, PARAMS)
    assert not OUTPUT.exists()


def test_the_stage_s_paths_are_the_files_ingest_writes_in_its_output_folder():
    assert paths.INGESTED_MANIFEST == paths.INGESTED_DIR / MANIFEST_FILE
    assert paths.SOURCES_SUMMARY == paths.INGESTED_DIR / SOURCES_FILE
