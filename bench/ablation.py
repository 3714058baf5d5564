"""Ablation of train and preprocess params over seeds, on validation and the external set.

Run from the project root after `dvc repro augment` (it reads data/augmented and never the
test split):

    python -m bench.ablation top3_shades --set train.freeze=3 \
        --set preprocess.color_constancy=shades_of_gray --seeds 42 43 44
    python -m bench.ablation --summary

Each seed trains params.yaml plus the `--set` overrides with the pipeline's own code (stage
`features` into a store of its own, seeded from data/feature_store; then `train`), MLflow in
a store of its own, and scores: the validation split (whole, and per source), and the ISIC
2018 external set's reporting half (balanced accuracy, melanoma AUC) with what every
threshold rule delivers there (melanoma.evaluation.report.threshold_rules). One JSON line per
(NAME, seed) is appended to bench/results/ablation/results.jsonl; `--summary` prints every
configuration's mean and standard deviation over its seeds.
"""

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.ablation_lite0 import external_set
from bench.project import override_params
from melanoma.config import PARAMS_FILE, parse_params
from melanoma.logs import setup_logging

log = logging.getLogger(__name__)

MANIFEST = Path("data/augmented/manifest.csv")
RESULTS = Path("bench/results/ablation")
EXTERNAL_NAME = "isic2018"


def parse_override(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    return name, yaml.safe_load(value)


def run(name: str, overrides: dict, seed: int) -> dict:
    import keras
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from melanoma.evaluation.metrics import probability_column, validation_metrics
    from melanoma.evaluation.operating_point import split_halves
    from melanoma.evaluation.report import EvaluationSet, threshold_rules
    from melanoma.labels import LABELS, MELANOMA, MELANOMA_INDEX
    from melanoma.model.features import write_feature_cache
    from melanoma.model.predict import predict_files
    from melanoma.model.training import TrainOutputs, run_training

    out = RESULTS / name / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    params_file = out / "params.yaml"
    shutil.copy(PARAMS_FILE, params_file)
    override_params(params_file, {**overrides, "train.seed": seed})
    params = parse_params(yaml.safe_load(params_file.read_text()))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(RESULTS / 'mlflow.db').resolve()}"
    store = RESULTS / "feature_store"
    if not store.exists() and Path("data/feature_store").exists():
        shutil.copytree("data/feature_store", store, copy_function=os.link)
    started = time.perf_counter()
    write_feature_cache(params.train, params.preprocess, MANIFEST, out / "features", store)
    features_seconds = time.perf_counter() - started
    outputs = TrainOutputs(**{k: out / v.name for k, v in vars(TrainOutputs()).items()})
    run_training(params, MANIFEST, outputs, out / "features")
    train_seconds = time.perf_counter() - started - features_seconds
    shutil.rmtree(out / "features")
    metrics = json.loads(outputs.metrics.read_text())

    val = pd.read_csv(outputs.validation_predictions)
    columns = [probability_column(label) for label in LABELS]
    val_true = val["label"].map(LABELS.index).to_numpy()
    sources = pd.read_csv(MANIFEST).set_index("image_path")["source"]
    per_source = {
        source: float(roc_auc_score(rows["label"] == MELANOMA, rows[probability_column(MELANOMA)]))
        for source, rows in val.groupby(val["image_path"].map(sources))
        if rows["label"].eq(MELANOMA).any()
    }

    model = keras.saving.load_model(outputs.model)
    paths, true = external_set()
    predicted = predict_files(
        model, paths, params.ingest.image_size, params.ingest.max_image_pixels
    )
    probabilities = np.array([[p.probabilities[label] for label in LABELS] for p in predicted])
    _, report = split_halves(true, params.evaluate.seed)
    external = EvaluationSet(EXTERNAL_NAME, [str(p) for p in paths], [str(p) for p in paths], true)
    rules = threshold_rules(
        params.evaluate.operating_point,
        params.evaluate.seed,
        (val_true, val[columns].to_numpy()),
        [external],
        {EXTERNAL_NAME: probabilities},
    )
    row = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "validation": metrics["validation"],
        "validation_melanoma_auc_per_source": per_source,
        "external_report_half": {
            "balanced_accuracy": float(
                balanced_accuracy_score(true[report], probabilities[report].argmax(axis=1))
            ),
            "melanoma_auc": float(
                roc_auc_score(true[report] == MELANOMA_INDEX, probabilities[report, MELANOMA_INDEX])
            ),
        },
        "external_whole": validation_metrics(true, probabilities),
        "threshold_rules": {
            rule: result.reporting_halves[EXTERNAL_NAME].model_dump()
            for rule, result in rules.items()
        },
        "epochs": metrics["epochs_run"],
        "images_per_second": metrics["images_per_second"],
        "features_seconds": features_seconds,
        "train_seconds": train_seconds,
    }
    with open(RESULTS / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("%s", json.dumps(row))
    return row


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="the configuration's name in the results")
    parser.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE", help="dotted param override"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--summary", action="store_true", help="print the table of results")
    args = parser.parse_args()
    setup_logging()
    if args.name:
        overrides = dict(parse_override(text) for text in args.set)
        for seed in args.seeds:
            run(args.name, overrides, seed)
    if args.summary:
        with pd.option_context("display.width", 250, "display.max_columns", 50):
            print(summary().T.to_string())


if __name__ == "__main__":
    main()
