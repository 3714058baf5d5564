"""A stronger model (Lite1/Lite2, test-time views, an ensemble) measured in resumable steps,
each at most 40 minutes on 2 cores:

    python -m bench.ablation backbone_lite0   # params.yaml (Lite0, 180 px, one block) x 3 seeds
    python -m bench.ablation views            # 1 / 4 / 8 views of the best backbone's models
    python -m bench.ablation ensemble         # its 3 seeds' probabilities averaged vs each alone
    python -m bench.ablation ensembles_lite0  # 9 Lite0 seeds: 3 ensembles of 3, each vs its members
    python -m bench.ablation blocks           # the best backbone with 2 fine-tuned blocks x 3 seeds
    python -m bench.ablation backbone_lite1   # Lite1 at 240 px (the data ingested again at 260)
    python -m bench.ablation backbone_lite2   # Lite2 at 260 px (the same copy)

A step writes bench/results/ablation_STEP.json: its key (the code of melanoma/, params.yaml
and the step's settings), one row per model or configuration and the table of means and
standard deviations over seeds. A step whose file holds the same key is skipped; each seed's
training keeps its own result (bench/results/ablation/STEP/seedN/row.json), so an interrupted
step resumes at the next seed. `views`, `ensemble` and `blocks` take the best backbone
measured so far (validation melanoma AUC, the mean over both sources), or the one named
(`views_lite0`); the first two train nothing, they score its models.

Every figure is on data the model never trained on: the validation split, per source, and the
reporting half of the ISIC 2018 external set (its choosing half picks thresholds, never a
configuration).
"""

import hashlib
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.ablation_runs import RESULTS, run
from bench.project import (
    PROJECT,
    command_env,
    copy_project,
    pin_source_deps,
    project_reference_labels,
)
from melanoma import paths
from melanoma.config import PARAMS_FILE, load_params

log = logging.getLogger(__name__)

SEEDS = (42, 43, 44)
# `ensembles`: three ensembles of three consecutive seeds, so that an ensemble's gain over its
# members has a spread of its own (`ensemble` averages the backbone step's seeds: one ensemble).
ENSEMBLE_SEEDS = tuple(range(42, 51))
ENSEMBLE_SIZE = 3
# Every seed trains one model, whatever params.yaml's train.ensemble: the steps compare single
# models and average them themselves (`ensemble`, `ensembles`).
ONE_MODEL = {"train.ensemble": 1}
VIEWS = (1, 4, 8)
# Backbones other than Lite0 take their native size: the data is ingested again, once, at the
# largest (a copy of the pipeline in bench/results/ablation/data_260), and each resizes it down.
LARGE_INGEST = 260
BACKBONES = {
    "lite0": {},
    "lite1": {"train.architecture": "efficientnet_lite1", "train.image_size": 240},
    "lite2": {"train.architecture": "efficientnet_lite2", "train.image_size": 260},
}
# On the best backbone measured (`views`), or on a named one (`views_lite0`).
ON_A_BACKBONE = ("views", "ensemble", "ensembles", "blocks")
STEPS = (
    *(f"backbone_{name}" for name in BACKBONES),
    *ON_A_BACKBONE,
    *(f"{kind}_{name}" for kind in ON_A_BACKBONE for name in BACKBONES),
)


def step_file(step: str) -> Path:
    return PROJECT / "bench" / "results" / f"ablation_{step}.json"


def step_key(step: str) -> str:
    """What a step's result depends on: the pipeline's code (committed tree and uncommitted
    changes of melanoma/), params.yaml, and the step's own settings."""
    git = ["git", "-C", str(PROJECT)]
    tree = subprocess.run([*git, "rev-parse", "HEAD:melanoma"], capture_output=True, text=True)
    diff = subprocess.run([*git, "diff", "HEAD", "--", "melanoma"], capture_output=True, text=True)
    settings = {
        "seeds": SEEDS,
        "views": VIEWS,
        "backbones": BACKBONES,
        "ingest": LARGE_INGEST,
        "ensembles": [ENSEMBLE_SEEDS, ENSEMBLE_SIZE],
    }
    parts = [tree.stdout, diff.stdout, (PROJECT / PARAMS_FILE).read_text(), step]
    parts.append(json.dumps(settings, sort_keys=True))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def run_step(step: str) -> dict:
    """Run `step` unless its result exists for the same key; return the result."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    key, path = step_key(step), step_file(step)
    if path.exists() and json.loads(path.read_text())["key"] == key:
        log.info("%s: measured already for this code and params (%s)", step, path)
        return json.loads(path.read_text())
    workdir = RESULTS / step
    if (workdir / "key").exists() and (workdir / "key").read_text() != key:
        shutil.rmtree(workdir)  # seeds measured for other code or params
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "key").write_text(key)
    started = time.perf_counter()
    kind, _, backbone = step.partition("_")
    if kind == "backbone":
        rows = backbone_rows(step, BACKBONES[backbone])
    else:
        models = backbone_models(backbone or None)
        if kind == "blocks":
            rows = block_rows(models, workdir)
        elif kind == "views":
            rows = view_rows(models, workdir)
        elif kind == "ensembles":
            rows = ensembles_rows(models, workdir)
        else:
            rows = ensemble_rows(models)
    result = {
        "step": step,
        "key": key,
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "rows": rows,
        "table": seed_table(rows).reset_index().to_dict("records"),
    }
    path.write_text(json.dumps(result, indent=2))
    log.info("%s written", path)
    return result


def backbone_rows(step: str, overrides: dict) -> list[dict]:
    root = data_root(overrides)
    overrides = {**overrides, **ONE_MODEL}
    return [run(step, overrides, seed, RESULTS / step / f"seed{seed}", root) for seed in SEEDS]


def data_root(overrides: dict) -> Path | None:
    """Where a backbone's runs read data/augmented: the project itself (None) at its own
    image size, else the copy ingested at LARGE_INGEST."""
    return data_at(LARGE_INGEST) if "train.image_size" in overrides else None


def data_at(size: int) -> Path:
    """A copy of the pipeline whose stages up to augment ran with `ingest.image_size: size`."""
    copy = RESULTS / f"data_{size}"
    if (copy / paths.AUGMENTED_MANIFEST).exists():
        return copy
    if copy.exists():
        shutil.rmtree(copy)
    sources = load_params(PROJECT / PARAMS_FILE).data.sources
    absolute = [s.model_copy(update={"path": (PROJECT / s.path).resolve()}) for s in sources]
    pinned = {
        "data.sources": [source.model_dump(mode="json") for source in absolute],
        **project_reference_labels(),
        "ingest.image_size": size,
    }
    pin_source_deps(copy_project(copy, pinned) / "dvc.yaml", len(sources))
    log.info("ingesting the sources at %d px in %s", size, copy)
    subprocess.run(["dvc", "repro", "augment"], cwd=copy, env=command_env(), check=True)
    return copy


def measured_backbones() -> dict[str, dict]:
    return {
        name: json.loads(step_file(f"backbone_{name}").read_text())
        for name in BACKBONES
        if step_file(f"backbone_{name}").exists()
    }


def backbone_models(name: str | None = None) -> list[dict]:
    """The rows (one per seed) of backbone `name`, or of the measured backbone with the
    highest mean validation melanoma AUC over both sources."""
    measured = measured_backbones()
    if name is not None and name not in measured:
        raise RuntimeError(f"run `python -m bench.ablation backbone_{name}` first")
    if not measured:
        raise RuntimeError("no backbone measured: run `python -m bench.ablation backbone_lite0`")
    if name is not None:
        return [dict(row, backbone=name) for row in measured[name]["rows"]]

    def mean_auc(result: dict) -> float:
        return float(np.mean([_source_auc_mean(row) for row in result["rows"]]))

    best = max(measured, key=lambda name: mean_auc(measured[name]))
    log.info("best backbone so far: %s (of %s)", best, sorted(measured))
    return [dict(row, backbone=best) for row in measured[best]["rows"]]


def _source_auc_mean(row: dict) -> float:
    return float(np.mean(list(row["validation_melanoma_auc_per_source"].values())))


def block_rows(models: list[dict], workdir: Path) -> list[dict]:
    """The best backbone with its two top blocks fine-tuned, each seed trained again, against
    its rows with one (the default)."""
    backbone, root = models[0]["backbone"], Path(models[0]["root"])
    overrides = {**models[0]["overrides"], **ONE_MODEL, "train.freeze": 2}
    two = [run("blocks", overrides, seed, workdir / f"seed{seed}", root) for seed in SEEDS]
    return [
        *(dict(row, name=f"{backbone} 1 block") for row in models),
        *(dict(row, name=f"{backbone} 2 blocks") for row in two),
    ]


def view_rows(models: list[dict], workdir: Path) -> list[dict]:
    """Each model scored again with each number of views (no training); one view is its own
    row. A model's rows are kept in `workdir` as they are measured: an interrupted step resumes
    at the next model."""
    import keras

    from bench.ablation_runs import score_model, working_directory
    from melanoma.inference.views import with_views

    rows = []
    for model_row in models:
        done = workdir / f"views_seed{model_row['seed']}.json"
        if done.exists():
            rows += json.loads(done.read_text())
            continue
        out = Path(model_row["model_file"]).parent
        trained = keras.saving.load_model(out / Path(model_row["model_file"]).name)
        own = {k: v for k, v in model_row.items() if k not in SECONDS}  # its training's
        measured = [dict(own, name=f"{model_row['backbone']} views 1")]
        for views in VIEWS[1:]:
            started = time.perf_counter()
            with working_directory(Path(model_row["root"])):
                figures = score_model(with_views(trained, views), out)
            measured.append(
                {
                    "name": f"{model_row['backbone']} views {views}",
                    "seed": model_row["seed"],
                    **figures,
                    "scoring_seconds": time.perf_counter() - started,
                }
            )
        done.write_text(json.dumps(measured))
        rows += measured
    return rows


def ensemble_rows(models: list[dict]) -> list[dict]:
    """The seeds' probabilities averaged, against each seed alone (its own rows)."""
    from bench.ablation_runs import figures_of

    validation = [pd.read_csv(row["validation_predictions"]) for row in models]
    external = [np.load(row["external_probabilities"]) for row in models]
    columns = [c for c in validation[0].columns if c.startswith("p_")]
    averaged = validation[0].copy()
    averaged[columns] = np.mean([v[columns].to_numpy() for v in validation], axis=0)
    alone = [dict(row, name=f"{row['backbone']} alone") for row in models]
    together = {
        "name": f"{models[0]['backbone']} ensemble of {len(models)}",
        "seed": "+".join(str(row["seed"]) for row in models),
        **figures_of(averaged, np.mean(external, axis=0)),
    }
    return [*alone, together]


def ensembles_rows(models: list[dict], workdir: Path) -> list[dict]:
    """ENSEMBLE_SEEDS trained on the backbone of `models`, averaged ENSEMBLE_SIZE consecutive
    seeds at a time: each ensemble's row beside its members' (`ensemble_rows`)."""
    backbone, overrides = models[0]["backbone"], {**models[0]["overrides"], **ONE_MODEL}
    root = data_root(overrides)
    trained = [
        dict(run("ensembles", overrides, seed, workdir / f"seed{seed}", root), backbone=backbone)
        for seed in ENSEMBLE_SEEDS
    ]
    groups = [trained[n : n + ENSEMBLE_SIZE] for n in range(0, len(trained), ENSEMBLE_SIZE)]
    return [row for group in groups for row in ensemble_rows(group)]


SECONDS = ("features_seconds", "train_seconds", "scoring_seconds")
FIGURES = (
    "val_melanoma_auc",
    "val_auc_ham10000",
    "val_auc_isic_collection",
    "ext_melanoma_auc",
    "ext_balanced_accuracy",
    *SECONDS,
)


def seed_table(rows: list[dict]) -> pd.DataFrame:
    """Mean ± sd over seeds of each configuration's figures (those its rows have)."""
    frame = pd.DataFrame(
        [
            {
                "name": row["name"],
                "val_melanoma_auc": row["validation"]["melanoma_auc"],
                **{
                    f"val_auc_{source}": auc
                    for source, auc in row["validation_melanoma_auc_per_source"].items()
                },
                "ext_melanoma_auc": row["external_report_half"]["melanoma_auc"],
                "ext_balanced_accuracy": row["external_report_half"]["balanced_accuracy"],
                **{k: row[k] for k in SECONDS if k in row},
            }
            for row in rows
        ]
    )
    figures = [f for f in FIGURES if f in frame]
    grouped = frame.groupby("name", sort=False)[figures]
    means, sds = grouped.mean(), grouped.std().fillna(0)
    table = means.map(lambda v: f"{v:.3f}") + " ± " + sds.map(lambda v: f"{v:.3f}")
    if "features_seconds" in frame:
        # The first seed fills the feature store, the others read it: the fill is the cost.
        fill = frame.groupby("name", sort=False)["features_seconds"].max()
        table["features_seconds"] = fill.map(lambda v: f"{v:.0f}")
    table["seeds"] = grouped.size()
    return table
