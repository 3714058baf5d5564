"""More clinics in training, judged leaving one clinic out (sources, detail, weights).

Which sources to train on, with image detail matched or not, weighted how.

Run from the project root; resumable steps, each at most 40 minutes on 2 cores:

    python -m bench.clinics data                 # the four sources ingested, validated, split
    python -m bench.clinics train CONFIG         # CONFIG x 3 seeds (one Lite0 per seed)
    python -m bench.clinics train CONFIG --seeds 42 --model MODEL   # one model: <= 25 min
    python -m bench.clinics table                # the tables, from the results (seconds)

`data` runs the pipeline up to `augment` in a copy (bench/results/clinics/data) whose
data.sources are the collection, HAM10000, ISIC 2017 and BCN_20000, with
`augment.match_detail_px` set: every training image sharper than BCN's 84 px copies has a
copy scaled down to 84 px and back up (the only augmented rows). One split serves every
configuration, so every configuration is scored on the same validation images of every source.

A configuration trains on the train rows of some sources (with or without the detail copies,
with some source weights) and is scored on the validation rows of all four sources: a
source it did not train on is a clinic it never saw. Each seed writes
bench/results/clinics/CONFIG/seedN/row.json as it finishes; a seed whose row exists is
skipped; a row is kept only for the same key (the data copy's manifest and params.yaml, the
training code and what the model trains on). The runs train with the copy's params.yaml, as
the project's was when `data` made the copy.
"""

import argparse
import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.code_fingerprint import code_fingerprint
from bench.machine import lite0_images_per_second
from bench.project import (
    PROJECT,
    command_env,
    copy_project,
    pin_source_deps,
    project_reference_labels,
)
from melanoma.config import load_params
from melanoma.logs import setup_logging
from melanoma.params.data import DataParams

log = logging.getLogger(__name__)

RESULTS = PROJECT / "bench" / "results" / "clinics"
DATA_COPY = RESULTS / "data"
# BCN_20000's copies: the detail every source is matched to.
BCN_DETAIL_PX = 84


def four_sources() -> list[dict]:
    """params.yaml's sources, paths made absolute: the four this benchmark compares (SOURCES),
    in the blocks docs/data.md gives for ISIC's published layouts."""
    sources = load_params(PROJECT / "params.yaml").data.sources
    absolute = [
        s.model_copy(update={"path": (PROJECT / s.path).resolve()}).model_dump(
            mode="json", exclude_defaults=True
        )
        for s in sources
    ]
    missing = sorted(set(SOURCES) - {s["name"] for s in absolute})
    if missing:
        raise SystemExit(
            f"params.yaml: data.sources lacks {missing}; bench.clinics compares {SOURCES}"
        )
    return absolute


def prepare_data() -> Path:
    """The copy of the pipeline up to `augment` on the four sources (made once)."""
    if (DATA_COPY / "data" / "augmented" / "manifest.csv").exists():
        return DATA_COPY
    if not DATA_COPY.exists():
        sources = four_sources()
        pinned = {
            "data.sources": sources,
            **project_reference_labels(),
            "augment.match_detail_px": BCN_DETAIL_PX,
        }
        pin_source_deps(copy_project(DATA_COPY, pinned) / "dvc.yaml", len(sources))
    log.info("ingesting the four sources in %s", DATA_COPY)
    subprocess.run(["dvc", "repro", "augment"], cwd=DATA_COPY, env=command_env(), check=True)
    return DATA_COPY


SOURCES = ("isic_collection", "ham10000", "isic2017", "bcn20000")
SHORT = {
    "isic_collection": "coll",
    "ham10000": "ham",
    "isic2017": "i17",
    "bcn20000": "bcn",
    "test": "test",
}
SEEDS = (42, 43, 44)
# Every seed trains one model, whatever params.yaml's train.ensemble (as bench.ablation's steps).
ONE_MODEL = {"train.ensemble": 1}
SCORE_BATCH = 64
TEST = "test"


@dataclass(frozen=True)
class Training:
    """What one model trains on: the train rows of `sources`, with or without the low-detail
    copies, each source's images weighted by `weights` (train.source_weights), with the train
    params `train` changes (dotted names, as `dvc exp run -S`; short names in TRAIN_SHORT)."""

    sources: tuple[str, ...]
    detail: bool = False
    weights: tuple[tuple[str, float], ...] = ()
    train: tuple[tuple[str, float | int], ...] = ()

    @property
    def name(self) -> str:
        parts = ["+".join(SHORT[s] for s in self.sources)]
        parts += ["detail"] if self.detail else []
        parts += [f"{SHORT[s]}{w:g}" for s, w in self.weights]
        parts += [f"{TRAIN_SHORT[k]}{v:g}" for k, v in self.train]
        return "_".join(parts)

    def without(self, source: str) -> "Training":
        weights = tuple((s, w) for s, w in self.weights if s != source)
        sources = tuple(s for s in self.sources if s != source)
        return Training(sources, self.detail, weights, self.train)

    def leave_one_out(self) -> dict[str, "Training"]:
        """Per source, the model of this recipe that never saw it: itself for a source it does
        not train on, else the same recipe trained without that source."""
        return {
            source: self.without(source) if source in self.sources else self
            for source in SOURCES
            if source not in self.sources or len(self.sources) > 1
        }


# How a configuration's changed train params show in its models' names.
TRAIN_SHORT = {
    "train.batch_size": "b",
    "train.epochs": "e",
    "train.learning_rate": "lr",
    "train.backbone_learning_rate": "blr",
}
ALL = SOURCES
# A quicker fit of the default (#34's budget of a change of what trains, 8 minutes): batches of
# 128 are 1.3 times as many views per second as 32 on this CPU, and 3 epochs instead of 4; with
# a quarter of the steps, the learning rates doubled (the square-root rule).
QUICKER_FIT = (
    ("train.batch_size", 128),
    ("train.epochs", 3),
    ("train.learning_rate", 0.002),
    ("train.backbone_learning_rate", 0.0006),
)
CONFIGS = {
    "two": Training(("isic_collection", "ham10000")),
    "three": Training(("isic_collection", "ham10000", "isic2017")),
    "three_detail": Training(("isic_collection", "ham10000", "isic2017"), detail=True),
    "four": Training(ALL),
    "four_detail": Training(ALL, detail=True),
    "four_detail_bcn_half": Training(ALL, detail=True, weights=(("bcn20000", 0.5),)),
    "four_detail_bcn_half_quicker": Training(
        ALL, detail=True, weights=(("bcn20000", 0.5),), train=QUICKER_FIT
    ),
}


def trainings(config: str) -> list[Training]:
    """The models a configuration's figures need: itself and its leave-one-out models."""
    recipe = CONFIGS[config]
    needed = [recipe, *recipe.leave_one_out().values()]
    return list(dict.fromkeys(needed))


# The code a model's figures depend on: what trains it and scores it (not the CLI, the
# registry or the sites, which change without changing a model). Keyed by what it does
# (bench.code_fingerprint): a definition moved between these files keeps the rows.
TRAINING_CODE = (
    "melanoma/data/dataset.py",
    "melanoma/model/architectures.py",
    "melanoma/model/calibration.py",
    "melanoma/model/efficientnet_lite.py",
    "melanoma/model/features.py",
    "melanoma/model/optimization.py",
    "melanoma/training/ensemble.py",
    "melanoma/training/fitting.py",
    "melanoma/training/run.py",
)


def model_params() -> dict:
    """The sections of the copy's params.yaml a model's figures depend on (not the registry's,
    MLflow's or evaluate's; not train.ensemble, which every run sets to 1)."""
    raw = yaml.safe_load((DATA_COPY / "params.yaml").read_text())
    shaping = ("data", "ingest", "validate", "augment", "preprocess", "train", "predict")
    chosen = {section: raw[section] for section in shaping if section in raw}
    chosen["train"] = {k: v for k, v in chosen["train"].items() if k != "ensemble"}
    # Each source as its params model reads it: a block written with or without its defaults
    # (label_column: null, split: train) is the same source.
    chosen["data"] = DataParams.model_validate(chosen["data"]).model_dump(mode="json")
    return chosen


def training_key(training: Training) -> str:
    """What a model's result depends on: the data copy's split, params.yaml, the training code
    and what it trains on (a row measured for another key is measured again)."""
    manifest = (DATA_COPY / "data" / "augmented" / "manifest.csv").read_bytes()
    parts = [
        hashlib.sha256(manifest).hexdigest(),
        # The copy's params that shape a model, as made by `data`: the runs train with them.
        json.dumps(model_params(), sort_keys=True),
        code_fingerprint((PROJECT / path for path in TRAINING_CODE), PROJECT),
        json.dumps([training.sources, training.detail, training.weights]),
        # Only when set: the rows measured before configurations changed train params keep
        # their keys.
        *([json.dumps(training.train)] if training.train else []),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def training_rows(training: Training, out: Path) -> Path:
    """The augmented manifest's train and val rows of the training's sources (its low-detail
    copies only with `detail`), written to out/manifest.csv."""
    manifest = pd.read_csv(DATA_COPY / "data" / "augmented" / "manifest.csv")
    rows = manifest[
        manifest["split"].isin(["train", "val"]) & manifest["source"].isin(training.sources)
    ]
    if not training.detail:
        rows = rows[~rows["augmented"]]
    path = out / "manifest.csv"
    rows.to_csv(path, index=False)
    return path


def train_one(training: Training, seed: int) -> dict:
    """Train `training` with `seed` (unless measured for the same key) and score it on every
    source's validation images, as they are and with the detail of an 84 px copy."""
    from bench.ablation_runs import run

    out = RESULTS / training.name / f"seed{seed}"
    key = training_key(training)
    if (out / "row.json").exists():
        row = json.loads((out / "row.json").read_text())
        if row.get("key") == key:
            return row
        # Set aside, not deleted (bench.ablation_runs.run measures only where no row is): a
        # run stopped half-way loses no measurement.
        previous = out / f"row.{row.get('key', 'unkeyed')[:12]}.json"
        log.info(
            "%s seed %d: measured for another key (kept as %s), measuring again",
            training.name,
            seed,
            previous,
        )
        (out / "row.json").replace(previous)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {
        **ONE_MODEL,
        "train.source_weights": dict(training.weights),
        **dict(training.train),
    }
    row = run(training.name, overrides, seed, out, DATA_COPY, training_rows(training, out))
    row |= {"key": key, "sources": list(training.sources), "detail": training.detail}
    row["per_source"] = score_sources(Path(row["model_file"]), training)
    # The machine's speed as the model trained: its train_seconds compare as a ratio to it.
    row["lite0_images_per_second"] = lite0_images_per_second()
    (out / "row.json").write_text(json.dumps(row, indent=2))
    return row


def score_sources(model_file: Path, training: Training) -> dict[str, dict]:
    """Per source, on its validation images (and on the test split, `test`): melanoma AUC and
    mean P(melanoma) as they are and reduced to BCN's detail, and whether the model trained on
    that source."""
    import keras
    from PIL import Image

    from melanoma.data.augmentation import reduce_detail
    from melanoma.inference.predict import ImageScorer, model_input_size, to_model_size
    from melanoma.labels import MELANOMA, MELANOMA_INDEX
    from melanoma.metrics import melanoma_auc

    model = keras.saving.load_model(model_file)
    scorer, size = ImageScorer(model, None), model_input_size(model)
    manifest = pd.read_csv(DATA_COPY / "data" / "augmented" / "manifest.csv")
    sets = {s: manifest[(manifest["split"] == "val") & (manifest["source"] == s)] for s in SOURCES}
    sets[TEST] = manifest[manifest["split"] == TEST]  # the collection's Test folder
    figures = {}
    for source, rows in sets.items():
        melanoma = (rows["label"] == MELANOMA).to_numpy()
        scored = {}
        for degraded in (False, True):
            p_melanoma = []
            for start in range(0, len(rows), SCORE_BATCH):
                images = []
                for path in rows["image_path"].iloc[start : start + SCORE_BATCH]:
                    with Image.open(DATA_COPY / path) as opened:
                        image = opened.convert("RGB")
                        image = reduce_detail(image, BCN_DETAIL_PX) if degraded else image
                        images.append(np.asarray(image))
                probabilities, _ = scorer(to_model_size(np.stack(images), size))
                p_melanoma.append(probabilities[:, MELANOMA_INDEX])
            scored[degraded] = np.concatenate(p_melanoma)
        figures[source] = {
            "trained_on": source in training.sources,
            "images": len(rows),
            "melanomas": int(melanoma.sum()),
            "melanoma_auc": melanoma_auc(melanoma, scored[False]),
            "mean_p_melanoma": float(scored[False].mean()),
            "melanoma_auc_84px": melanoma_auc(melanoma, scored[True]),
            "mean_p_melanoma_84px": float(scored[True].mean()),
        }
    return figures


def train_config(config: str, seeds: tuple[int, ...], model: str | None = None) -> list[dict]:
    """Every model of `config` (itself and its leave-one-out models; or the one named
    `model`), seed by seed."""
    prepare_data()
    chosen = [t for t in trainings(config) if model in (None, t.name)]
    if not chosen:
        names = ", ".join(t.name for t in trainings(config))
        raise SystemExit(f"{config} has no model {model!r}; its models: {names}")
    return [train_one(training, seed) for seed in seeds for training in chosen]


def measured(training: Training, seed: int) -> dict | None:
    """The model's row, once scored on every source (None before: a row being scored has
    only its training's figures)."""
    path = RESULTS / training.name / f"seed{seed}" / "row.json"
    row = json.loads(path.read_text()) if path.exists() else {}
    return row if "per_source" in row else None


def config_figures(config: str, seed: int) -> dict[str, float] | None:
    """One seed's figures of a configuration, or None until all its models are measured."""
    recipe = CONFIGS[config]
    row = measured(recipe, seed)
    trainings = recipe.leave_one_out()
    left_out = {s: r for s, t in trainings.items() if (r := measured(t, seed)) is not None}
    if row is None or len(left_out) < len(trainings):
        return None
    figures = {f"val_{SHORT[s]}": row["per_source"][s]["melanoma_auc"] for s in recipe.sources}
    figures |= {f"loco_{SHORT[s]}": r["per_source"][s]["melanoma_auc"] for s, r in left_out.items()}
    figures["loco_mean"] = float(np.mean([figures[f"loco_{SHORT[s]}"] for s in left_out]))
    figures["test_auc"] = row["per_source"][TEST]["melanoma_auc"]
    figures["isic2018_auc"] = row["external_report_half"]["melanoma_auc"]
    figures["isic2018_bal_acc"] = row["external_report_half"]["balanced_accuracy"]
    figures["train_minutes"] = row["train_seconds"] / 60
    figures["lite0_images_per_second"] = row.get("lite0_images_per_second", np.nan)
    return figures


def mean_sd(values: pd.Series) -> str:
    """The mean ± the standard deviation over the seeds that have the figure (the mean alone
    from one)."""
    present = values.dropna()
    if len(present) < 2:
        return f"{present.mean():.3f}"
    return f"{present.mean():.3f} ± {present.std(ddof=1):.3f}"


def seed_frame(config: str) -> pd.DataFrame:
    """A configuration's figures (columns) on each seed whose models are all measured (index)."""
    figures = {seed: f for seed in SEEDS if (f := config_figures(config, seed)) is not None}
    return pd.DataFrame.from_dict(figures, orient="index")


def config_table() -> pd.DataFrame:
    """Per configuration, mean ± sd over the seeds whose models are all measured."""
    cells: dict[str, dict[str, str | int]] = {}
    for config in CONFIGS:
        frame = seed_frame(config)
        if frame.empty:
            continue
        cells[config] = {column: mean_sd(frame[column]) for column in frame}
        cells[config]["seeds"] = len(frame)
    table = pd.DataFrame(cells)
    first = [f"{kind}_{SHORT[s]}" for kind in ("val", "loco") for s in SOURCES]
    return table.reindex(
        [r for r in first if r in table.index] + [r for r in table.index if r not in first]
    )


# The rule the default is chosen by (docs/data.md, bench/ABLATION.md): the best leave-one-out
# mean among the configurations that lose at most RULE_MAX_LOSS validation melanoma AUC, against
# the baseline (the default before more clinics), on a source the baseline trains on. Only
# configurations measured on every seed compete; figures are means over the seeds. Means equal
# at the precision the tables give (RULE_DECIMALS) are a tie, broken by the smaller loss: the
# rule's other figure, not a difference no table shows.
BASELINE = "two"
RULE_MAX_LOSS = 0.01
RULE_DECIMALS = 3


def rule_table() -> pd.DataFrame:
    """Per configuration measured on every seed: its leave-one-out mean (over the seeds, then
    each seed's), its largest loss of validation AUC against BASELINE on a source BASELINE
    trains on (negative: a gain on every such source), and whether the rule admits it."""
    frames = {config: seed_frame(config) for config in CONFIGS}
    complete = {c: f for c, f in frames.items() if len(f) == len(SEEDS)}
    if BASELINE not in complete:
        return pd.DataFrame()
    baseline = complete[BASELINE].mean()
    kept = [f"val_{SHORT[s]}" for s in CONFIGS[BASELINE].sources]
    rows = {}
    for config, frame in complete.items():
        losses = baseline[kept] - frame[kept].mean()
        worst = losses.idxmax()
        rows[config] = {
            "loco_mean": round(float(frame["loco_mean"].mean()), RULE_DECIMALS),
            "loco_mean_per_seed": " / ".join(f"{v:.3f}" for v in frame["loco_mean"]),
            "largest_validation_loss": round(float(losses[worst]), RULE_DECIMALS),
            "on_source": worst.removeprefix("val_"),
            "admitted": bool(losses[worst] <= RULE_MAX_LOSS),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def rule_choice(table: pd.DataFrame) -> str | None:
    """The configuration the rule chooses: the best leave-one-out mean among those admitted,
    a tie going to the smaller validation loss."""
    admitted = table[table["admitted"]] if not table.empty else table
    if admitted.empty:
        return None
    ranked = admitted.sort_values(
        ["loco_mean", "largest_validation_loss"], ascending=[False, True], kind="stable"
    )
    return str(ranked.index[0])


def sharpness_table() -> pd.DataFrame:
    """Per model recipe and source (seed means): melanoma AUC and mean P(melanoma) of the
    validation images as they are and reduced to 84 px detail: a model that reads sharpness
    as a clinic moves its P(melanoma) when only the detail changes."""
    rows = []
    for config, recipe in CONFIGS.items():
        for seed in SEEDS:
            row = measured(recipe, seed)
            for source, f in (row or {}).get("per_source", {}).items():
                rows.append({"config": config, "source": SHORT[source], **f})
    if not rows:
        return pd.DataFrame()
    columns = ["melanoma_auc", "melanoma_auc_84px", "mean_p_melanoma", "mean_p_melanoma_84px"]
    table = pd.DataFrame(rows).groupby(["config", "source"], sort=False)[columns].mean()
    return table.round(3)


def tables() -> str:
    """The tables in Markdown, as bench/ABLATION.md shows them."""
    rule = rule_table()
    seeds = "/".join(map(str, SEEDS))
    return (
        "Configurations (val_*: validation melanoma AUC of a source trained on; loco_*: of a "
        "model of the recipe that never saw the source; mean ± sd over seeds)\n\n"
        f"{config_table().fillna('—').to_markdown()}\n\n"
        f"The rule (seeds {seeds}; a loss is against `{BASELINE}`, admitted up to "
        f"{RULE_MAX_LOSS}): the default is `{rule_choice(rule)}`\n\n"
        f"{rule.to_markdown() if not rule.empty else '(no configuration on every seed)'}\n\n"
        "Detail as a proxy (seed means)\n\n"
        f"{sharpness_table().reset_index().to_markdown(index=False)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["data", "train", "table"])
    parser.add_argument("config", nargs="?", choices=sorted(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--model", help="train only this model of the configuration")
    args = parser.parse_args()
    setup_logging()
    if args.step == "data":
        prepare_data()
    elif args.step == "train":
        if args.config is None:
            parser.error(f"train needs a configuration: {', '.join(CONFIGS)}")
        train_config(args.config, tuple(args.seeds), args.model)
    else:
        print(tables())


if __name__ == "__main__":
    main()
