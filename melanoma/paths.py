"""Every file and folder the pipeline's stages hand each other, relative to the project root.

dvc.yaml names the same paths as the stages' deps and outs; tests/test_dvc_yaml.py holds the
two together, so a path renamed here and not there fails a test instead of a `dvc repro`.
"""

from pathlib import Path

INGESTED_DIR = Path("data/ingested")
INGESTED_MANIFEST = INGESTED_DIR / "manifest.csv"
# What each data source is and gave (melanoma.data.ingest.sources_summary), beside the manifest.
SOURCES_SUMMARY = INGESTED_DIR / "sources.json"
VALIDATED_MANIFEST = Path("data/validated/manifest.csv")
VALIDATION_REPORT = Path("reports/validation.json")
DATA_DOCS = Path("reports/data_docs")
AUGMENTED_DIR = Path("data/augmented")
AUGMENTED_MANIFEST = AUGMENTED_DIR / "manifest.csv"
FEATURES_DIR = Path("data/features")
# Features by image content, kept across runs (melanoma.model.features.FeatureStore).
FEATURE_STORE_DIR = Path("data/feature_store")

MODEL_FILE = Path("models/model.keras")
# the unfamiliar-image score's Gaussians and threshold (melanoma.inference.unfamiliar), beside
# the model
UNFAMILIAR_FILE = Path("models/unfamiliar.npz")
# the validation split's P(melanoma) and features, what the drift check compares a batch with
DRIFT_REFERENCE_FILE = Path("models/drift_reference.npz")
RUN_FILE = Path("models/run.json")  # which MLflow run and logged model `train` made
TRAIN_METRICS = Path("reports/train_metrics.json")
TRAIN_HISTORY = Path("reports/train_history.csv")
# Per-image validation probabilities: where an operating threshold is chosen.
VALIDATION_PREDICTIONS = Path("reports/validation_predictions.csv")
# What stage `train` writes, by field of melanoma.training.run.TrainOutputs.
TRAIN_OUTPUTS = {
    "model": MODEL_FILE,
    "unfamiliar": UNFAMILIAR_FILE,
    "drift_reference": DRIFT_REFERENCE_FILE,
    "run_info": RUN_FILE,
    "metrics": TRAIN_METRICS,
    "history": TRAIN_HISTORY,
    "validation_predictions": VALIDATION_PREDICTIONS,
}

METRICS_FILE = Path("reports/metrics.json")
PREDICTIONS_FILE = Path("reports/predictions.csv")  # the test split's
EXTERNAL_DIR = Path("reports/external")  # <set>/predictions.csv and <set>/files.csv
PLOTS_DIR = Path("reports/plots")
GALLERY_FILE = Path("reports/melanoma_gallery.png")
MODEL_CARD = Path("reports/model_card.md")

REGISTRATION_FILE = Path("reports/registration.json")  # the version `register` made or found


def external_predictions(set_name: str) -> Path:
    return EXTERNAL_DIR / set_name / "predictions.csv"


def external_files(set_name: str) -> Path:
    return EXTERNAL_DIR / set_name / "files.csv"


def predictions_file(set_name: str, test: str) -> Path:
    """The predictions file of an evaluation set: the test split's (the set named `test`), or an
    external set's."""
    return PREDICTIONS_FILE if set_name == test else external_predictions(set_name)
