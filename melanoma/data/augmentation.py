"""Train/validation split and class-balanced offline augmentation of the training images.

Everything here is deterministic and independent of the row order of the input manifest:
rows are sorted before use, the split shuffles sorted image groups with a per-label RNG,
and every augmented copy draws its transforms from an RNG seeded by (seed, source image id,
copy number). The same params and input therefore give byte-identical images and manifest.
"""

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageStat
from tqdm import tqdm

from melanoma.data.images import PNG_COMPRESS_LEVEL
from melanoma.data.manifest import USE
from melanoma.labels import LABELS
from melanoma.params.data import AugmentParams

log = logging.getLogger(__name__)

TRAIN, VAL, TEST = "train", "val", "test"
# Augmented copies are always PNG: re-encoding them as JPEG would add compression artefacts
# that the originals of the same class don't have.
AUGMENTED_SUFFIX = ".png"
COPY_COLUMNS = [
    "source",
    "source_image_id",
    "source_image_path",
    "label",
    "copy_index",
    "image_path",
]


@dataclass(frozen=True)
class AugmentationPlan:
    """The images of each split, and the augmented copies to write for `train`."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    # source, source_image_id, source_image_path, label, copy_index, image_path
    copies: pd.DataFrame
    # the same columns: the low-detail copies of the sharper training images (match_detail_px)
    detail_copies: pd.DataFrame


def usable_images(
    validated: pd.DataFrame, manifest_path: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validated train and test rows whose decision is `use`, sorted, with their files checked.

    Raises ValueError naming `manifest_path` if a usable row has no split, label, hash or image,
    and FileNotFoundError if an image it names is missing.
    """
    used = validated[validated["decision"] == USE]
    log.info(
        "%s: %d rows, %d with decision %r, %d dropped by validate",
        manifest_path,
        len(validated),
        len(used),
        USE,
        len(validated) - len(used),
    )
    bad_split = used[~used["split"].isin([TRAIN, TEST])]
    if not bad_split.empty:
        raise ValueError(
            f"{manifest_path}: {len(bad_split)} usable row(s) have a split other than train/test, "
            f"e.g. image {bad_split['image_id'].iloc[0]!r} with split "
            f"{bad_split['split'].iloc[0]!r}"
        )
    bad_label = used[~used["label"].isin(LABELS)]
    if not bad_label.empty:
        raise ValueError(
            f"{manifest_path}: {len(bad_label)} usable row(s) have an unknown label, "
            f"e.g. image {bad_label['image_id'].iloc[0]!r} with label "
            f"{bad_label['label'].iloc[0]!r}"
        )
    for column in ("image_id", "image_path", "group"):
        empty = used[used[column] == ""]
        if not empty.empty:
            raise ValueError(
                f"{manifest_path}: {len(empty)} usable row(s) have an empty {column}, "
                f"e.g. row {empty.index[0] + 2} of the file"
            )
    missing = [p for p in used["image_path"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{manifest_path}: {len(missing)} image(s) it lists do not exist, e.g. {missing[0]}"
        )
    used = used.sort_values(["label", "source", "image_id", "image_path"], ignore_index=True)
    return used[used["split"] == TRAIN], used[used["split"] == TEST]


def split_train_val(
    train: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split of the training rows; rows of one `group` (copies of one picture, images
    of one lesion, near-duplicates: melanoma.data.groups) stay on one side.

    Each group is assigned to the label most of its rows carry (ties: the first label in
    alphabetical order). Per label, the groups are shuffled by an RNG seeded from `seed` and
    the label, then moved to validation until it holds round(val_fraction * images) images, so
    a change in one class never reshuffles another. A label always keeps at least one group
    for training and, if it has two or more, gives at least one to validation.
    """
    # Series.mode() lists the most frequent values sorted, so [0] breaks ties alphabetically.
    group_label = train.groupby("group")["label"].agg(lambda labels: labels.mode()[0])
    group_size = train["group"].value_counts()
    val_groups: set[str] = set()
    for label in sorted(group_label.unique()):
        groups = sorted(group_label.index[group_label == label])
        images = int(group_size[groups].sum())
        target = round(val_fraction * images)
        if len(groups) >= 2:
            target = max(target, 1)
        order = np.random.default_rng(_seed_from(seed, "split", label)).permutation(len(groups))
        taken = 0
        for position in order[: len(groups) - 1]:
            if taken >= target:
                break
            val_groups.add(groups[position])
            taken += int(group_size[groups[position]])
        if taken == 0:
            log.warning(
                "label %s has %d image(s) in one group: none go to validation", label, images
            )
    in_val = train["group"].isin(val_groups)
    return train[~in_val].reset_index(drop=True), train[in_val].reset_index(drop=True)


def plan_copies(
    train: pd.DataFrame,
    target_per_class: int,
    images_dir: Path,
    max_copies_per_image: int | None = None,
) -> pd.DataFrame:
    """The augmented copies that bring every training class up to `target_per_class` images.

    A class below the target gets `target - n` copies, made from its originals in turn
    (copy k comes from original k mod n), so every original is used about equally; with
    `max_copies_per_image`, at most that many per original (a class of 2 images then stays
    small instead of becoming hundreds of variations of 2 pictures). A class already at or
    above the target keeps all its originals and gets no augmented copies: it is neither
    augmented nor subsampled.
    """
    rows = []
    for label, originals in train.groupby("label", sort=True):
        originals = originals.sort_values(["image_id", "image_path"])
        wanted = max(target_per_class - len(originals), 0)
        if max_copies_per_image is not None:
            wanted = min(wanted, max_copies_per_image * len(originals))
        for k in range(wanted):
            source = originals.iloc[k % len(originals)]
            copy_index = k // len(originals)
            name = f"{Path(source['image_path']).stem}_aug{copy_index}{AUGMENTED_SUFFIX}"
            rows.append(
                {
                    "source": source["source"],
                    "source_image_id": source["image_id"],
                    "source_image_path": source["image_path"],
                    "label": label,
                    "copy_index": copy_index,
                    "image_path": (images_dir / source["source"] / label / name).as_posix(),
                }
            )
    return pd.DataFrame(rows, columns=COPY_COLUMNS)


def plan_detail_copies(
    train: pd.DataFrame, match_detail_px: int | None, images_dir: Path
) -> pd.DataFrame:
    """A low-detail copy of every training image whose original is larger than
    `match_detail_px` on its shorter side (none with None): so that a source published small
    (BCN_20000 at 84 px) is not the only one whose images look blurred, and sharpness cannot
    stand for the clinic and its melanoma rate."""
    if match_detail_px is None:
        return pd.DataFrame(columns=COPY_COLUMNS)
    shorter = np.minimum(
        pd.to_numeric(train["source_width"]), pd.to_numeric(train["source_height"])
    )
    sharp = train[shorter > match_detail_px]
    suffix = f"_detail{match_detail_px}{AUGMENTED_SUFFIX}"
    return pd.DataFrame(
        {
            "source": sharp["source"],
            "source_image_id": sharp["image_id"],
            "source_image_path": sharp["image_path"],
            "label": sharp["label"],
            "copy_index": 0,
            "image_path": [
                (images_dir / source / label / f"{Path(path).stem}{suffix}").as_posix()
                for source, label, path in zip(
                    sharp["source"], sharp["label"], sharp["image_path"], strict=True
                )
            ],
        },
        columns=COPY_COLUMNS,
    ).reset_index(drop=True)


def plan_augmentation(
    validated: pd.DataFrame, params: AugmentParams, manifest_path: Path, images_dir: Path
) -> AugmentationPlan:
    train, test = usable_images(validated, manifest_path)
    train, val = split_train_val(train, params.val_fraction, params.seed)
    copies = plan_copies(train, params.target_per_class, images_dir, params.max_copies_per_image)
    detail_copies = plan_detail_copies(train, params.match_detail_px, images_dir)
    return AugmentationPlan(
        train=train, val=val, test=test, copies=copies, detail_copies=detail_copies
    )


def augment_image(
    image: Image.Image, params: AugmentParams, rng: np.random.Generator
) -> Image.Image:
    """A random variant of `image`, same size: rotation, flips, zoom, brightness, contrast.

    Every random number is drawn whether or not its transform is on, so turning one transform
    off does not change what the others do.
    """
    angle = rng.uniform(-params.rotation_degrees, params.rotation_degrees)
    flip_h, flip_v = rng.random(2) < 0.5
    crop_fraction = rng.uniform(0, params.zoom)
    crop_x, crop_y = rng.random(2)
    brightness = rng.uniform(1 - params.brightness, 1 + params.brightness)
    contrast = rng.uniform(1 - params.contrast, 1 + params.contrast)

    if angle:
        # The corners a rotation uncovers get the image's mean colour rather than black, which
        # would be a cue no real image has.
        fill = tuple(round(c) for c in ImageStat.Stat(image).mean)
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if params.flip_horizontal and flip_h:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.flip_vertical and flip_v:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if crop_fraction:
        width, height = image.size
        crop_w, crop_h = round(width * (1 - crop_fraction)), round(height * (1 - crop_fraction))
        left, top = round(crop_x * (width - crop_w)), round(crop_y * (height - crop_h))
        image = image.resize(
            (width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
        )
    image = ImageEnhance.Brightness(image).enhance(brightness)
    return ImageEnhance.Contrast(image).enhance(contrast)


# The JPEG quality of BCN_20000's 84 px copies (their quantization tables are libjpeg's at 75).
LOW_DETAIL_JPEG_QUALITY = 75


def reduce_detail(image: Image.Image, side: int) -> Image.Image:
    """The image as a small published copy would give it: scaled down to side x side (Lanczos),
    saved as JPEG at LOW_DETAIL_JPEG_QUALITY, then scaled back to its own size as ingest scales
    a small image up. The same size, the detail of a `side` px copy."""
    small = image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=LOW_DETAIL_JPEG_QUALITY)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB").resize(image.size, Image.Resampling.LANCZOS)


def write_copies(copies: pd.DataFrame, params: AugmentParams) -> None:
    """Write every planned copy, each from its own RNG so the result doesn't depend on order."""
    for copy in tqdm(copies.itertuples(index=False), total=len(copies), desc="augment", unit="img"):
        rng = np.random.default_rng(
            _seed_from(params.seed, copy.source_image_id, str(copy.copy_index))
        )
        with Image.open(copy.source_image_path) as source:
            image = augment_image(source.convert("RGB"), params, rng)
        path = Path(copy.image_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def write_detail_copies(copies: pd.DataFrame, side: int) -> None:
    """Write every planned low-detail copy (melanoma.data.images.reduce_detail)."""
    for copy in tqdm(copies.itertuples(index=False), total=len(copies), desc="detail", unit="img"):
        with Image.open(copy.source_image_path) as source:
            image = reduce_detail(source.convert("RGB"), side)
        path = Path(copy.image_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def augmented_manifest(plan: AugmentationPlan) -> pd.DataFrame:
    """Every image the model sees, with split and lineage
    (melanoma.data.manifest.AUGMENTED_COLUMNS)."""

    def originals(rows: pd.DataFrame, split: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "image_path": rows["image_path"],
                "label": rows["label"],
                "split": split,
                "source": rows["source"],
                "source_image_id": rows["image_id"],
                "source_image_path": rows["image_path"],
                "augmented": False,
            }
        )

    copies = pd.concat([plan.copies, plan.detail_copies]).assign(split=TRAIN, augmented=True)
    manifest = pd.concat(
        [
            originals(plan.train, TRAIN),
            copies,
            originals(plan.val, VAL),
            originals(plan.test, TEST),
        ],
        ignore_index=True,
    )
    split_order = manifest["split"].map({TRAIN: 0, VAL: 1, TEST: 2})
    return (
        manifest.assign(_split_order=split_order)
        .sort_values(["_split_order", "label", "image_path"])
        .drop(columns="_split_order")
        .reset_index(drop=True)
    )


def log_counts(manifest: pd.DataFrame) -> None:
    counts = manifest.groupby(["split", "label", "augmented"]).size().unstack(fill_value=0)
    log.info("images per split, label and augmented:\n%s", counts.to_string())


def _seed_from(seed: int, *keys: str) -> int:
    """A stable 64-bit seed from the params seed and string keys (Python's hash() is salted)."""
    text = "\x1f".join([str(seed), *keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
