"""Simulated sites: a model trained on one source, the other source and the ISIC 2018 external
set as clinics it never saw. How each site threshold rule keeps its promise, how often the
unfamiliar warning fires, and whether the drift check tells a site from validation.

Run from the project root after `dvc repro augment` (it reads data/augmented, never the test
split). Resumable steps, each well under 40 minutes on 2 cores; a step whose result file exists
is skipped:

    python -m bench.sites models      # per (training source, seed): train, then score every site
    python -m bench.sites table       # the tables from the scores (minutes: site heads are fitted)
    python -m bench.sites loco        # per (source, seed): the default's model that never saw it
    python -m bench.sites table --loco

`models` step `<source>_seed<seed>` (about 5 minutes): trains params.yaml on that source's
train/val rows alone with the pipeline's own code (cached activations from data/feature_store,
MLflow in a store of its own), then writes bench/results/sites/<step>/scores.npz: for its own
validation split, each other source's non-test images, the ISIC 2018 external set and the
non-lesion images of bench/non_lesion.py, each image's P(melanoma), label, pooled features at
the unfamiliar score's depth and the model's unfamiliar score.

`loco` step `without_<source>_seed<seed>` (a few minutes; nothing is trained): the same scores
for the four-source default's leave-one-out models, which `python -m bench.clinics train
four_detail_bcn_half` trained (bench/results/clinics): the site is the one source the model
never saw (its non-test images in bench.clinics' data copy), with the ISIC 2018 set; its
validation split is the model's own. `table --loco` reads these steps and writes
bench/results/sites/tables_loco.json.
"""

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.clinics import SOURCES as LOCO_SOURCES  # each left out in turn by bench.clinics
from bench.non_lesion import write_non_lesion_images
from bench.sites_scores import ISIC2018, NON_LESION, RESULTS, SCORES_FILE, VALIDATION
from melanoma.logs import setup_logging
from melanoma.paths import (
    AUGMENTED_MANIFEST,
    FEATURE_STORE_DIR,
    PLOTS_DIR,
    SOURCES_SUMMARY,
    TRAIN_OUTPUTS,
)

log = logging.getLogger(__name__)

SOURCES = ("isic_collection", "ham10000")
SEEDS = (42, 43, 44)


def step_name(source: str, seed: int) -> str:
    return f"{source}_seed{seed}"


def one_source_manifest(source: str, out: Path) -> Path:
    """The augmented manifest's train and val rows of `source` alone."""
    manifest = pd.read_csv(AUGMENTED_MANIFEST)
    rows = manifest[(manifest["source"] == source) & manifest["split"].isin(["train", "val"])]
    path = out / "manifest.csv"
    rows.to_csv(path, index=False)
    return path


def site_images(train_source: str) -> dict[str, tuple[list[Path], np.ndarray]]:
    """The sites of a model trained on `train_source`: (image files, is melanoma) of every other
    source's non-test, non-augmented images, and of the ISIC 2018 external set."""
    manifest = pd.read_csv(AUGMENTED_MANIFEST)
    sites = {
        source: labelled_images(source_rows(manifest, source), Path())
        for source in SOURCES
        if source != train_source
    }
    return sites | {ISIC2018: isic2018_images()}


def source_rows(manifest: pd.DataFrame, source: str) -> pd.DataFrame:
    """A source's non-test, non-augmented rows of an augmented manifest: a site's images."""
    return manifest[
        (manifest["source"] == source)
        & manifest["split"].isin(["train", "val"])
        & ~manifest["augmented"]
    ]


def labelled_images(rows: pd.DataFrame, root: Path) -> tuple[list[Path], np.ndarray]:
    """(image files under `root`, is melanoma) of manifest rows."""
    from melanoma.labels import MELANOMA

    return [root / p for p in rows["image_path"]], (rows["label"] == MELANOMA).to_numpy()


def isic2018_images() -> tuple[list[Path], np.ndarray]:
    """(image files, is melanoma) of the ISIC 2018 external set, its unusable files left out."""
    from bench.project import project_external_set
    from melanoma.data.sources import walk_directory
    from melanoma.evaluation.external import place
    from melanoma.labels import MELANOMA

    external = project_external_set(ISIC2018)
    files = [place(f) for f in walk_directory(external)]
    labelled = sorted((f.path, f.label) for f in files if not f.problem)
    return (
        [external / path for path, _ in labelled],
        np.array([label == MELANOMA for _, label in labelled]),
    )


def score(model, detector, paths: list[Path], params) -> dict[str, np.ndarray]:
    """P(melanoma), the features at the detector's depth and the unfamiliar score of files,
    through `melanoma predict`'s own code path."""
    from melanoma.inference.predict import predict_files

    size, max_pixels = params.ingest.image_size, params.ingest.max_image_pixels
    predictions = predict_files(model, paths, size, max_pixels, detector)
    unusable = [p.path for p in predictions if not p.ok]
    if unusable:
        raise RuntimeError(f"{len(unusable)} images cannot be read: {unusable[:5]}")
    return {
        "melanoma": np.array([p.melanoma_probability for p in predictions]),
        "features": np.stack([p.answered_features for p in predictions]),
        "unfamiliar": np.array([p.unfamiliar_score for p in predictions]),
    }


def run_model_step(source: str, seed: int) -> Path:
    """Train on `source` alone and score every site; returns the scores file."""
    import yaml

    from bench.project import override_params
    from melanoma.config import PARAMS_FILE, parse_params
    from melanoma.inference.predict import load_model_and_detector
    from melanoma.model.features import write_feature_cache
    from melanoma.training.run import TrainOutputs, run_training

    out = RESULTS / step_name(source, seed)
    scores_file = out / SCORES_FILE
    if scores_file.exists():
        log.info("%s: done before, skipped", scores_file)
        return scores_file
    out.mkdir(parents=True, exist_ok=True)
    params_file = out / PARAMS_FILE
    shutil.copy(PARAMS_FILE, params_file)
    # One model per seed, as the results measured: seeds 42, 43 and 44 would otherwise be
    # ensembles sharing members (train.ensemble), not three independent models.
    override_params(params_file, {"train.seed": seed, "train.ensemble": 1})
    params = parse_params(yaml.safe_load(params_file.read_text()))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(RESULTS / 'mlflow.db').resolve()}"
    manifest = one_source_manifest(source, out)
    outputs = TrainOutputs(**{k: out / v.name for k, v in TRAIN_OUTPUTS.items()})
    if not outputs.run_info.exists():  # written last by training: a model trained before
        write_feature_cache(
            params.train, params.preprocess, manifest, out / "features", FEATURE_STORE_DIR
        )
        run_training(params, manifest, outputs, out / "features", SOURCES_SUMMARY)
        shutil.rmtree(out / "features")
    model, detector = load_model_and_detector(str(outputs.model))
    if detector is None:
        raise RuntimeError(f"{outputs.model}: no unfamiliar-image detector, whose scores are kept")

    val = pd.read_csv(manifest).query("split == 'val'")
    groups = {VALIDATION: labelled_images(val, Path())} | site_images(source)
    write_scores(out, groups, model, detector, params)
    return scores_file


# The recipe of params.yaml's default whose leave-one-out models the `loco` steps score.
LOCO_CONFIG = "four_detail_bcn_half"


def loco_step_name(source: str, seed: int) -> str:
    return f"without_{source}_seed{seed}"


def run_loco_step(source: str, seed: int) -> Path:
    """Score the default's model that never saw `source` (bench.clinics) on its validation
    split, on `source`'s non-test images, on the ISIC 2018 set and on non-lesion images;
    returns the scores file."""
    import yaml

    from bench import clinics
    from melanoma.config import PARAMS_FILE, parse_params
    from melanoma.inference.predict import load_model_and_detector

    out = RESULTS / loco_step_name(source, seed)
    scores_file = out / SCORES_FILE
    if scores_file.exists():
        log.info("%s: done before, skipped", scores_file)
        return scores_file
    model_dir = clinics.RESULTS / clinics.CONFIGS[LOCO_CONFIG].leave_one_out()[source].name
    model_dir /= f"seed{seed}"
    if not (model_dir / "model.keras").exists():
        # Only the rows are committed: a checkout that did not train the model has none.
        raise SystemExit(
            f"{model_dir}/model.keras: no such model; run `python -m bench.clinics train "
            f"{LOCO_CONFIG} --seeds {seed}` first (with its row.json moved away, if present)"
        )
    params = parse_params(yaml.safe_load((model_dir / PARAMS_FILE).read_text()))
    model, detector = load_model_and_detector(str(model_dir / "model.keras"))
    if detector is None:
        raise RuntimeError(f"{model_dir}: no unfamiliar-image detector, whose scores are kept")
    data = clinics.DATA_COPY
    own = pd.read_csv(model_dir / "manifest.csv")
    groups = {
        VALIDATION: labelled_images(own[own["split"] == "val"], data),
        source: labelled_images(source_rows(pd.read_csv(data / AUGMENTED_MANIFEST), source), data),
        ISIC2018: isic2018_images(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_scores(out, groups, model, detector, params)
    return scores_file


def write_scores(out: Path, groups: dict, model, detector, params) -> None:
    """Score every group and the non-lesion images into out/SCORES_FILE (written whole or
    not at all)."""
    scores_file = out / SCORES_FILE
    with tempfile.TemporaryDirectory() as scratch:
        non_lesion = write_non_lesion_images(Path(scratch), PLOTS_DIR)
        arrays: dict[str, np.ndarray] = {}
        for name, (paths, is_melanoma) in {
            **groups,
            NON_LESION: (non_lesion, np.zeros(len(non_lesion), bool)),
        }.items():
            log.info("%s: scoring %s (%d images)", out.name, name, len(paths))
            for key, value in score(model, detector, paths, params).items():
                arrays[f"{name}/{key}"] = value
            arrays[f"{name}/is_melanoma"] = is_melanoma
    arrays["unfamiliar_threshold"] = np.asarray(detector.threshold, dtype=np.float64)
    with open(scores_file.with_suffix(".partial.npz"), "wb") as file:
        # numpy's stubs read a keyword of **arrays as savez's `allow_pickle: bool`
        np.savez(file, **arrays)  # type: ignore[arg-type]
    scores_file.with_suffix(".partial.npz").rename(scores_file)
    log.info("%s: written", scores_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["models", "loco", "table"])
    parser.add_argument(
        "--sources", nargs="+", help=f"default: {SOURCES} (with --loco or loco: {LOCO_SOURCES})"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--loco", action="store_true", help="table: of the `loco` steps")
    args = parser.parse_args()
    setup_logging()
    loco = args.loco or args.step == "loco"
    sources = args.sources or list(LOCO_SOURCES if loco else SOURCES)
    name = loco_step_name if loco else step_name
    steps = [(source, seed) for seed in args.seeds for source in sources]
    if args.step == "models":
        for source, seed in steps:
            run_model_step(source, seed)
    elif args.step == "loco":
        for source, seed in steps:
            run_loco_step(source, seed)
    else:
        from bench.sites_tables import LOCO_TABLES, TABLES, print_tables
        from melanoma.config import load_params

        names = [name(source, seed) for source, seed in steps]
        print_tables(names, load_params().sites, LOCO_TABLES if loco else TABLES)


if __name__ == "__main__":
    main()
