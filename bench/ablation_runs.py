"""One ablation run (params.yaml plus overrides, one seed: the pipeline's own `features` and
`train`) and its figures on the validation split, per source, and on the ISIC 2018 external
set: what `python -m bench.ablation`, its steps (bench.ablation_steps) and bench.clinics train
and score with."""

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.ablation_lite0 import external_set
from bench.project import PROJECT, override_params
from melanoma.config import PARAMS_FILE, load_params, parse_params
from melanoma.metrics import probability_column
from melanoma.paths import AUGMENTED_MANIFEST, FEATURE_STORE_DIR, SOURCES_SUMMARY, TRAIN_OUTPUTS

log = logging.getLogger(__name__)

RESULTS = PROJECT / "bench" / "results" / "ablation"
EXTERNAL_PROBABILITIES = "external_probabilities.npy"
EXTERNAL_NAME = "isic2018"


def run(
    name: str,
    overrides: dict,
    seed: int,
    out: Path | None = None,
    root: Path | None = None,
    manifest: Path = AUGMENTED_MANIFEST,  # of the working directory: see `root`
) -> dict:
    """Train params.yaml (of `root`, default the project) plus `overrides` with `seed` into `out`
    (default RESULTS/name/seedN) and score it; a run whose `out` holds its row is not repeated.
    `root` is a copy of the pipeline whose data/augmented the run reads (bench.ablation_steps
    ingests at another size in one); `manifest` the rows it trains and validates on (a part
    of data/augmented's, in bench.clinics)."""
    import keras

    from melanoma.evaluation.report import EvaluationSet, threshold_rules
    from melanoma.labels import LABELS
    from melanoma.model.features import write_feature_cache
    from melanoma.training.run import TrainOutputs, run_training

    out = (out or RESULTS / name / f"seed{seed}").resolve()
    if (out / "row.json").exists():
        return json.loads((out / "row.json").read_text())
    root = (root or Path.cwd()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params_file = out / PARAMS_FILE
    shutil.copy(root / PARAMS_FILE, params_file)
    override_params(params_file, {**overrides, "train.seed": seed})
    params = parse_params(yaml.safe_load(params_file.read_text()))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(RESULTS / 'mlflow.db').resolve()}"
    store = (RESULTS / "feature_store").resolve()
    if not store.exists() and FEATURE_STORE_DIR.exists():
        shutil.copytree(FEATURE_STORE_DIR, store, copy_function=os.link)
    with working_directory(root):
        started = time.perf_counter()
        write_feature_cache(params.train, params.preprocess, manifest, out / "features", store)
        features_seconds = time.perf_counter() - started
        outputs = TrainOutputs(**{k: out / v.name for k, v in TRAIN_OUTPUTS.items()})
        run_training(params, manifest, outputs, out / "features", SOURCES_SUMMARY)
        train_seconds = time.perf_counter() - started - features_seconds
        shutil.rmtree(out / "features")
        model = keras.saving.load_model(outputs.model)
        figures = score_model(model, out, outputs.validation_predictions)
    metrics = json.loads(outputs.metrics.read_text())
    val = pd.read_csv(outputs.validation_predictions)
    columns = [probability_column(label) for label in LABELS]
    paths, true = external_set()
    probabilities = np.load(out / EXTERNAL_PROBABILITIES)
    external = EvaluationSet(EXTERNAL_NAME, [str(p) for p in paths], [str(p) for p in paths], true)
    rules = threshold_rules(
        params.evaluate.operating_point,
        params.evaluate.seed,
        (val["label"].map(LABELS.index).to_numpy(), val[columns].to_numpy()),
        [external],
        {EXTERNAL_NAME: probabilities},
    )
    row = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        **figures,
        "threshold_rules": {
            rule: result.reporting_halves[EXTERNAL_NAME].model_dump()
            for rule, result in rules.items()
        },
        "epochs": metrics["epochs_run"],
        "images_per_second": metrics["images_per_second"],
        "features_seconds": features_seconds,
        "train_seconds": train_seconds,
        "root": str(root),
        "model_file": str(outputs.model),
        "validation_predictions": str(outputs.validation_predictions),
        "external_probabilities": str(out / EXTERNAL_PROBABILITIES),
    }
    with open(RESULTS / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    (out / "row.json").write_text(json.dumps(row, indent=2))
    log.info("%s", json.dumps(row))
    return row


@contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def score_model(model, out: Path, validation_file: Path | None = None) -> dict:
    """Score `model` on the validation images that `out`'s training held out (read from the
    working directory, as they were) and on the external set; write the external
    probabilities to `out` (train's own validation predictions are `validation_file`: with
    None, the validation images are scored again, as with test-time views); its figures."""
    from melanoma.inference.predict import predict_files, predict_split
    from melanoma.labels import LABELS

    validation = pd.read_csv(validation_file or out / "validation_predictions.csv")
    if validation_file is None:
        true = validation["label"].map(LABELS.index).to_numpy()
        scored = predict_split(model, validation["image_path"], true, batch_size=64)
        validation[[probability_column(label) for label in LABELS]] = scored
    params = load_params(out / PARAMS_FILE)
    paths, _ = external_set()
    predicted = predict_files(
        model, paths, params.ingest.image_size, params.ingest.max_image_pixels
    )
    probabilities = np.array(
        [[p.answered_probabilities[label] for label in LABELS] for p in predicted]
    )
    if validation_file is not None:
        np.save(out / EXTERNAL_PROBABILITIES, probabilities)
    return figures_of(validation, probabilities)


def figures_of(validation: pd.DataFrame, external_probabilities: np.ndarray) -> dict:
    """Validation melanoma AUC (whole and per source: the folder after images/ in each path)
    and the figures of the external set's reporting half."""
    from sklearn.metrics import balanced_accuracy_score

    from melanoma.evaluation.operating_point import split_halves
    from melanoma.labels import LABELS, MELANOMA_INDEX
    from melanoma.metrics import melanoma_auc, validation_metrics

    columns = [probability_column(label) for label in LABELS]
    true = validation["label"].map(LABELS.index).to_numpy()
    sources = validation["image_path"].str.extract(r"images/([^/]+)/")[0]
    per_source = {
        source: melanoma_auc(
            true[rows] == MELANOMA_INDEX, validation.loc[rows, columns[MELANOMA_INDEX]]
        )
        for source in sorted(sources.unique())
        if (true[rows := (sources == source).to_numpy()] == MELANOMA_INDEX).any()
    }
    _, external_true = external_set()
    _, report = split_halves(external_true, load_params(PROJECT / PARAMS_FILE).evaluate.seed)
    reported = external_probabilities[report]
    return {
        "validation": validation_metrics(true, validation[columns].to_numpy()),
        "validation_melanoma_auc_per_source": per_source,
        "external_report_half": {
            "balanced_accuracy": float(
                balanced_accuracy_score(external_true[report], reported.argmax(axis=1))
            ),
            "melanoma_auc": melanoma_auc(
                external_true[report] == MELANOMA_INDEX, reported[:, MELANOMA_INDEX]
            ),
        },
        "external_whole": validation_metrics(external_true, external_probabilities),
    }


def summary() -> pd.DataFrame:
    """Mean ± sd over seeds of each configuration's figures."""
    rows = [json.loads(line) for line in (RESULTS / "results.jsonl").read_text().splitlines()]
    flat = []
    for row in rows:
        figures = {
            "val_bal_acc": row["validation"]["balanced_accuracy"],
            "val_mel_auc": row["validation"]["melanoma_auc"],
            **{f"val_auc_{s}": v for s, v in row["validation_melanoma_auc_per_source"].items()},
            "ext_bal_acc": row["external_report_half"]["balanced_accuracy"],
            "ext_mel_auc": row["external_report_half"]["melanoma_auc"],
            "train_s": row["train_seconds"],
            "features_s": row["features_seconds"],
        }
        for rule, delivered in row["threshold_rules"].items():
            figures[f"{rule}_sens"] = delivered["sensitivity"]
            figures[f"{rule}_spec"] = delivered["specificity"]
        flat.append({"name": row["name"], "seed": row["seed"], **figures})
    table = pd.DataFrame(flat).groupby("name")
    means, sds = table.mean(numeric_only=True), table.std(numeric_only=True)
    cells = means.map(lambda v: f"{v:.3f}").astype(str) + " ± " + sds.map(lambda v: f"{v:.3f}")
    cells["seeds"] = table.size()
    return cells.drop(columns="seed")
