import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma.data.augmentation import (
    augment_image,
    augmented_manifest,
    plan_augmentation,
    plan_copies,
    plan_detail_copies,
    reduce_detail,
    split_train_val,
    write_copies,
    write_detail_copies,
)
from melanoma.data.manifest import VALIDATED_COLUMNS, read_manifest
from melanoma.labels import LABELS
from melanoma.params.data import AugmentParams

VALIDATED = Path("data/validated/manifest.csv")
OUT = Path("data/augmented")


def _augment(params: dict, validated: pd.DataFrame) -> pd.DataFrame:
    augment = AugmentParams(**params["augment"])
    plan = plan_augmentation(validated, augment, VALIDATED, OUT / "images")
    write_copies(plan.copies, augment)
    write_detail_copies(plan.detail_copies, augment.match_detail_px)
    return augmented_manifest(plan)


def _file_hashes(directory: Path) -> dict[str, str]:
    return {
        p.as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_same_input_in_any_row_order_gives_byte_identical_output(tiny_project):
    validated = read_manifest(VALIDATED, VALIDATED_COLUMNS)
    first = _augment(tiny_project, validated)
    first_files = _file_hashes(OUT)
    shutil.rmtree(OUT)

    shuffled = validated.sample(frac=1, random_state=7)
    second = _augment(tiny_project, shuffled)

    assert first_files, "no augmented image was written"
    assert _file_hashes(OUT) == first_files
    assert first.to_csv() == second.to_csv()


def test_each_training_class_reaches_the_target_and_larger_classes_keep_all(tiny_project):
    validated = read_manifest(VALIDATED, VALIDATED_COLUMNS)
    manifest = _augment(tiny_project, validated)
    target = tiny_project["augment"]["target_per_class"]
    train = manifest[manifest["split"] == "train"]

    counts = train.groupby("label")["augmented"].value_counts().unstack(fill_value=0)
    originals_in_train = counts[False]
    for label in LABELS:
        expected = max(target, originals_in_train[label])
        assert counts.loc[label].sum() == expected, label
    # melanoma has 12 training images, above the target of 8: none dropped, none augmented.
    assert counts.loc["melanoma", True] == 0
    assert originals_in_train["melanoma"] > target
    copies = train[train["augmented"]]
    assert all(Path(p).is_file() for p in copies["image_path"])
    assert copies["image_path"].is_unique


def test_no_image_and_no_duplicate_group_on_both_sides_of_the_split(tiny_project):
    validated = read_manifest(VALIDATED, VALIDATED_COLUMNS)
    train = validated[(validated["split"] == "train") & (validated["decision"] == "use")]
    fit, val = split_train_val(train, val_fraction=0.25, seed=42)

    assert not set(fit["pixel_sha256"]) & set(val["pixel_sha256"])
    assert len(fit) + len(val) == len(train)
    # Stratified: every label gives at least one image to validation, about a quarter.
    assert set(val["label"]) == set(LABELS)
    assert len(val) == pytest.approx(0.25 * len(train), abs=len(LABELS))
    # The nevus triplet of identical images stays together.
    nevus_group = train[train["image_id"].str.startswith("ISIC_4000")]["pixel_sha256"].iloc[0]
    sides = [int((side["pixel_sha256"] == nevus_group).sum()) for side in (fit, val)]
    assert sorted(sides) == [0, 3]


def test_split_does_not_depend_on_unrelated_classes(tiny_project):
    validated = read_manifest(VALIDATED, VALIDATED_COLUMNS)
    train = validated[(validated["split"] == "train") & (validated["decision"] == "use")]
    _, val = split_train_val(train, 0.25, seed=42)
    _, val_without_nevus = split_train_val(train[train["label"] != "nevus"], 0.25, seed=42)
    assert set(val_without_nevus["image_id"]) == set(val[val["label"] != "nevus"]["image_id"])


def test_only_training_originals_are_augmented_and_val_test_are_untouched(tiny_project):
    validated = read_manifest(VALIDATED, VALIDATED_COLUMNS)
    manifest = _augment(tiny_project, validated)

    held_out = manifest[manifest["split"].isin(["val", "test"])]
    assert not held_out["augmented"].any()
    assert (held_out["image_path"] == held_out["source_image_path"]).all()
    assert held_out["image_path"].str.startswith("data/ingested/").all()
    test_ids = set(validated[(validated["split"] == "test")]["image_id"])
    assert set(manifest[manifest["split"] == "test"]["source_image_id"]) == test_ids

    copies = manifest[manifest["augmented"]]
    train_originals = manifest[(manifest["split"] == "train") & ~manifest["augmented"]]
    assert set(copies["source_image_path"]) <= set(train_originals["image_path"])
    assert (copies["split"] == "train").all()
    assert "ISIC_dropped" not in set(manifest["source_image_id"])


def test_a_missing_image_is_named(tiny_project):
    validated = read_manifest(VALIDATED, VALIDATED_COLUMNS)
    missing = validated["image_path"].iloc[3]
    Path(missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        _augment(tiny_project, validated)


def test_transforms_off_leave_the_image_unchanged_and_on_change_it():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    off = AugmentParams(
        val_fraction=0.2,
        target_per_class=1,
        rotation_degrees=0,
        flip_horizontal=False,
        flip_vertical=False,
        zoom=0,
        brightness=0,
        contrast=0,
    )
    unchanged = augment_image(image, off, np.random.default_rng(1))
    assert np.array_equal(np.asarray(unchanged), pixels)

    on = off.model_copy(update={"rotation_degrees": 30, "zoom": 0.2, "brightness": 0.2})
    changed = augment_image(image, on, np.random.default_rng(1))
    assert changed.size == image.size and changed.mode == "RGB"
    assert not np.array_equal(np.asarray(changed), pixels)


def test_max_copies_per_image_caps_a_tiny_class_below_the_target():
    train = pd.DataFrame(
        {
            "source": ["isic", "isic", "isic"],
            "image_id": ["a1", "a2", "b1"],
            "image_path": ["a/1.png", "a/2.png", "b/1.png"],
            "label": ["nevus", "nevus", "melanoma"],
        }
    )
    uncapped = plan_copies(train, target_per_class=10, images_dir=Path("aug"))
    assert uncapped["label"].value_counts().to_dict() == {"nevus": 8, "melanoma": 9}

    capped = plan_copies(train, target_per_class=10, images_dir=Path("aug"), max_copies_per_image=3)
    assert capped["label"].value_counts().to_dict() == {"nevus": 6, "melanoma": 3}
    # Each original gives at most 3 copies, every one a distinct file.
    assert capped["source_image_id"].value_counts().max() == 3
    assert capped["image_path"].is_unique


def test_a_target_of_zero_writes_no_copies():
    train = pd.DataFrame(
        {
            "source": ["isic", "isic"],
            "image_id": ["a1", "b1"],
            "image_path": ["a/1.png", "b/1.png"],
            "label": ["nevus", "melanoma"],
        }
    )
    assert plan_copies(train, target_per_class=0, images_dir=Path("aug")).empty


def test_only_training_images_sharper_than_the_match_get_a_low_detail_copy():
    train = pd.DataFrame(
        {
            "source": ["isic", "bcn", "isic"],
            "image_id": ["a1", "b1", "c1"],
            "image_path": ["i/a1.png", "i/b1.png", "i/c1.png"],
            "label": ["nevus", "melanoma", "melanoma"],
            "source_width": ["600", "84", "1024"],
            "source_height": ["450", "84", "80"],
        }
    )
    assert plan_detail_copies(train, None, Path("aug")).empty

    copies = plan_detail_copies(train, 84, Path("aug"))

    # BCN's 84 px copy and an image 80 px high have no more detail to lose.
    assert copies["source_image_id"].tolist() == ["a1"]
    assert copies["image_path"].tolist() == ["aug/isic/nevus/a1_detail84.png"]


def test_a_low_detail_copy_loses_the_detail_a_small_copy_lacks_and_keeps_the_size():
    rng = np.random.default_rng(0)

    def smooth(side: int) -> Image.Image:  # a lesion-like image: no detail finer than 1/12
        pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        return Image.fromarray(pixels, "RGB").resize((side, side), Image.Resampling.BICUBIC)

    grain = rng.normal(0, 40, (180, 180, 3))
    sharp = Image.fromarray(np.clip(np.asarray(smooth(180), float) + grain, 0, 255).astype("uint8"))
    # What ingest makes of an image published at 84 px.
    upsampled = smooth(84).resize((180, 180), Image.Resampling.LANCZOS)

    def change(image: Image.Image) -> float:
        reduced = reduce_detail(image, 84)
        assert reduced.size == image.size and reduced.mode == "RGB"
        return float(np.abs(np.asarray(reduced, float) - np.asarray(image, float)).mean())

    # The sharp image's fine grain is gone; the small copy had none to lose.
    assert change(sharp) > 3 * change(upsampled)


def test_low_detail_copies_are_training_rows_of_their_source_and_label(tiny_project):
    # The tiny project's originals: 600 x 450, all but two of 16 px.
    validated = read_manifest(VALIDATED, VALIDATED_COLUMNS).assign(
        source_width="600", source_height="450"
    )
    validated.loc[validated.index[:2], ["source_width", "source_height"]] = "16"
    params = {"augment": {**tiny_project["augment"], "target_per_class": 0, "match_detail_px": 16}}

    manifest = _augment(params, validated)

    copies = manifest[manifest["augmented"]]
    originals = manifest[~manifest["augmented"] & (manifest["split"] == "train")]
    assert not copies.empty and (copies["split"] == "train").all()
    assert not set(copies["source_image_path"]) & set(validated["image_path"].iloc[:2])
    assert set(copies["source_image_path"]) <= set(originals["image_path"])
    by_original = originals.set_index("image_path")
    assert (
        copies["label"].to_numpy() == by_original.loc[copies["source_image_path"], "label"]
    ).all()
    for path in copies["image_path"]:
        assert (
            Image.open(path).size
            == Image.open(copies.set_index("image_path").loc[path, "source_image_path"]).size
        )
