"""Fixtures shared by the test modules. Keep each small and documented."""

import hashlib
import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from bench.project import command_env, copy_project, keep_weights_of_sources, pin_source_deps
from melanoma.data.manifest import AUGMENTED_COLUMNS, INGEST_COLUMNS, VALIDATED_COLUMNS
from melanoma.labels import LABELS
from tests.helpers import (
    HAM_LABELS,
    MODEL_SIZE,
    build_tiny_classifier,
    image_file_bytes,
    table_source_params,
    write_table_source,
)

# --- order: the files that take minutes first ---------------------------------------------------

# `make test` hands whole files to its two workers in collection order, two at a time each. The
# quick benchmark's file (about 5 minutes) goes first, to one worker, with a short file; the
# files that use the session's tiny pipeline repository (`pipeline_repo`: about 70 s to build,
# once per worker that needs it) all go to the other worker, so that it is built once.
FIRST_FILES = (
    "test_bench.py",
    "test_experiments.py",
    "test_config.py",  # the benchmark worker's second file: short, no pipeline_repo
    "test_team.py",
    "test_remote.py",
    "test_model_card.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(FIRST_FILES)}
    # A stable sort: every other test keeps its place, after these files.
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST_FILES)))


# --- tiny ISIC-like sources (ingest, validate, pipeline tests) ---------------------------------

ISIC_TOP_FOLDER = "Skin cancer ISIC The International Skin Imaging Collaboration"


def _default_isic_files() -> dict[str, bytes]:
    # Real folder names have spaces: "basal cell carcinoma".
    places = [
        (split, label.replace("_", " ")) for label in LABELS for split in ("Train", "Train", "Test")
    ]
    return {
        f"{split}/{folder}/ISIC_{n:07d}.jpg": image_file_bytes(n)
        for n, (split, folder) in enumerate(places)
    }


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    """image_bytes(seed, size=(16, 16), fmt="JPEG") -> bytes of a random-pixel RGB image file.

    Same arguments, same bytes: plant an exact duplicate by reusing a seed.
    """
    return image_file_bytes


@pytest.fixture
def isic_source(tmp_path: Path) -> Callable[..., Path]:
    """Build a tiny source shaped like the ISIC collection and return its path.

    isic_source(files=None, *, extra=None, top_folder=False, as_zip=False, name="source")
    - files: {relative POSIX path: bytes}. Default: 27 distinct 16x16 JPEGs, for each of the
      nine labels two in Train/<folder>/ and one in Test/<folder>/, folder names as in the real
      collection ("basal cell carcinoma"), named ISIC_0000000.jpg, ISIC_0000001.jpg, ... with
      the pixels of image_bytes(n) for ISIC_<n>.
    - extra: more {path: bytes} added to files (plant defects, duplicates, leaks).
    - top_folder: put everything under ISIC_TOP_FOLDER/, as the public download does.
    - as_zip: write <name>.zip (members read as-is, so unsafe names can be planted) instead.
    """

    def build(
        files: dict[str, bytes] | None = None,
        *,
        extra: dict[str, bytes] | None = None,
        top_folder: bool = False,
        as_zip: bool = False,
        name: str = "source",
    ) -> Path:
        content = {**(_default_isic_files() if files is None else files), **(extra or {})}
        prefix = f"{ISIC_TOP_FOLDER}/" if top_folder else ""
        if as_zip:
            location = tmp_path / f"{name}.zip"
            with zipfile.ZipFile(location, "w", zipfile.ZIP_DEFLATED) as archive:
                for path, data in content.items():
                    archive.writestr(zipfile.ZipInfo(prefix + path, (2020, 1, 1, 0, 0, 0)), data)
            return location
        location = tmp_path / name
        location.mkdir()
        for path, data in content.items():
            target = location / (prefix + path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return location

    return build


# --- tiny validated project (augment, train, stage tests) --------------------------------------

TINY_SIZE = 32
PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


EXTERNAL_LABELS = ("melanoma", "nevus", "basal_cell_carcinoma")


def write_external_set(root: Path, per_label: int = 6) -> Path:
    """A tiny external set at `root`, laid out like the shared ISIC 2018 one: for each of
    EXTERNAL_LABELS `per_label` TINY_SIZE px JPEGs ISIC_99<label><n>.jpg (a class colour plus
    noise) in folders with spaces, and beside them a labels.csv (outside the class folders).
    Returns root."""
    rng = np.random.default_rng(2)
    for index, label in enumerate(EXTERNAL_LABELS):
        colour = np.array([index * 80, 255 - index * 80, 128])
        for n in range(per_label):
            path = root / label.replace("_", " ") / f"ISIC_99{index:02d}{n:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(-40, 40, (TINY_SIZE, TINY_SIZE, 3))
            Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(path)
    (root / "labels.csv").write_text("file,label\n")
    return root


@pytest.fixture
def external_folder(tmp_path: Path) -> Path:
    """write_external_set(tmp_path / "external"): 6 JPEGs for each of EXTERNAL_LABELS."""
    return write_external_set(tmp_path / "external")


def _tiny_params() -> dict:
    """params.yaml with the sizes cut down so that training takes seconds. The external set
    keeps the default's relative path: tests that evaluate point it at a write_external_set."""
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["ingest"]["image_size"] = TINY_SIZE
    raw["augment"].update(val_fraction=0.25, target_per_class=8)
    # No warm-up: some tests train for a single epoch.
    # A small resnet from scratch, whatever the default architecture: the tests exercise the
    # pipeline's mechanics; tests/model/test_efficientnet_lite.py covers the pretrained network.
    raw["train"].update(
        architecture="resnet",
        freeze="none",
        backbone_learning_rate=None,
        learning_rate=0.001,
        image_size=TINY_SIZE,
        filters=[8, 16],
        batch_size=8,
        epochs=2,
        warmup_epochs=0,
        ensemble=1,  # the tests of train.ensemble build their own
    )
    return raw


def write_sources_summary(files: int) -> None:
    """data/ingested/sources.json as ingest writes it, for one source `isic` of `files` files."""
    summary = [
        {
            "name": "isic",
            "kind": "folders",
            "path": "source",
            "sha256": hashlib.sha256(str(files).encode()).hexdigest(),
            "files": files,
            "accepted": files,
            "rejected": {},
        }
    ]
    Path("data/ingested").mkdir(parents=True, exist_ok=True)
    Path("data/ingested/sources.json").write_text(json.dumps(summary))


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A project directory, made the cwd, holding data/validated/manifest.csv and its images.

    Images are 32 px PNGs under data/ingested/images/<split>/<label>/, as ingest writes them.
    Per label: 5 train + 1 test images, except melanoma with 12 train images (above the
    target_per_class of 8). Nevus also has 2 byte-identical copies of its first train image
    (one duplicate group of 3, decision "use"), and one more row has decision "drop".
    Writes the tiny params (returned as a dict) to ./params.yaml and points
    MLFLOW_TRACKING_URI at a SQLite store in the directory.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    rows = []

    def add(image_id: str, split: str, label: str, pixels: np.ndarray, decision: str = "use"):
        path = Path(f"data/ingested/images/{split}/{label}/{image_id}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "RGB").save(path)
        rows.append(
            {
                "source": "isic",
                "image_id": image_id,
                "split": split,
                "label": label,
                "pixel_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                "group": hashlib.sha256(pixels.tobytes()).hexdigest()[:12],
                "image_path": path.as_posix(),
                "status": "accepted",
                "decision": decision,
            }
        )

    rng = np.random.default_rng(0)
    for index, label in enumerate(LABELS):
        # A class colour plus noise, so that the classes differ as they do in real data.
        colour = np.array([index * 28, 255 - index * 28, (index * 90) % 256])
        n_train = 12 if label == "melanoma" else 5
        for n in range(n_train + 1):
            noise = rng.integers(-40, 40, (TINY_SIZE, TINY_SIZE, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            split = "test" if n == n_train else "train"
            add(f"ISIC_{index}{n:03d}", split, label, pixels)
            if label == "nevus" and n == 0:
                add(f"ISIC_{index}{n:03d}(1)", split, label, pixels)
                add(f"ISIC_{index}{n:03d}(2)", split, label, pixels)
    add("ISIC_dropped", "train", "melanoma", np.zeros((TINY_SIZE, TINY_SIZE, 3), np.uint8), "drop")

    manifest = pd.DataFrame(rows).reindex(columns=VALIDATED_COLUMNS, fill_value="")
    Path("data/validated").mkdir(parents=True)
    manifest.to_csv("data/validated/manifest.csv", index=False)
    write_sources_summary(len(manifest))
    params = _tiny_params()
    Path("params.yaml").write_text(yaml.safe_dump(params))
    return params


# --- ingest manifests as DataFrames (validate tests) -------------------------------------------


def _ingest_row(n: int, split: str, label: str, **fields: str) -> dict[str, str]:
    source_path = fields.pop("source_path", f"{split.title()}/{label}/ISIC_{n:07d}.jpg")
    row = {
        "source": "isic",
        "image_id": Path(source_path).stem,
        "split": split,
        "label": label,
        "source_path": source_path,
        "lesion_id": "",
        "source_format": "JPEG",
        "source_mode": "RGB",
        "source_width": "180",
        "source_height": "180",
        "source_bytes": "5000",
        "file_sha256": f"{n:064x}",
        "pixel_sha256": f"{n:064x}",
        # n's bits spread over the hash: distinct images are far apart
        "perceptual_hash": f"{(n * 0x9E3779B97F4A7C15) % 2**64:016x}",
        "image_path": f"data/ingested/images/isic/{split}/{label}/ISIC_{n:07d}.png",
        "width": "180",
        "height": "180",
        "channels": "3",
        "status": "accepted",
        "reason": "",
        "detail": "",
    }
    return {**row, **fields}


@pytest.fixture
def ingest_manifest() -> Callable[..., pd.DataFrame]:
    """ingest_manifest(per_split={"train": 2, "test": 1}, extra=()) -> an ingest manifest.

    The DataFrame has INGEST_COLUMNS, all values strings, as read_manifest returns it. Rows:
    for each label, per_split[split] accepted 180x180 RGB images with distinct pixel hashes
    and source_path "<Split>/<label>/ISIC_<n>.jpg". Each dict in extra adds one such row
    (its own distinct hash) with the given fields replacing the defaults: split and label are
    required; plant a duplicate by repeating a pixel_sha256, a rejected row with
    status="rejected" and a reason.
    """

    def build(
        per_split: dict[str, int] | None = None, extra: tuple[dict[str, str], ...] = ()
    ) -> pd.DataFrame:
        counts = per_split or {"train": 2, "test": 1}
        places = [
            (split, label) for label in LABELS for split, k in counts.items() for _ in range(k)
        ]
        rows = [_ingest_row(n, split, label) for n, (split, label) in enumerate(places)]
        rows += [_ingest_row(len(rows) + i, **fields) for i, fields in enumerate(extra)]
        return pd.DataFrame(rows)

    return build


# --- reference labels in ISIC's ground-truth format (validate tests) ---------------------------

REFERENCE_COLUMNS = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def write_reference_csv(
    path: Path, labels: dict[str, str], columns: list[str] | None = None
) -> Path:
    """Write `labels` ({image: class column}) as a one-hot CSV like ISIC's 2019 ground truth
    (values "0.0"/"1.0", columns REFERENCE_COLUMNS unless given) and return `path`."""
    columns = columns or REFERENCE_COLUMNS
    rows = [
        {"image": image, **{c: "1.0" if c == marked else "0.0" for c in columns[1:]}}
        for image, marked in labels.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


@pytest.fixture
def reference_csv(tmp_path: Path) -> Callable[..., Path]:
    """reference_csv(labels, columns=None, name="reference.csv") -> path of a tiny reference
    file in tmp_path: write_reference_csv with {image: class column}."""

    def write(
        labels: dict[str, str], columns: list[str] | None = None, name: str = "reference.csv"
    ) -> Path:
        return write_reference_csv(tmp_path / name, labels, columns)

    return write


# --- tiny models and an MLflow registry (evaluate, registry, predict, cli, serve tests) -------


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite tracking store with its tables made: creating them takes over a second, a copy
    of this file takes nothing."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@contextmanager
def _mlflow_project_at(root: Path, monkeypatch: pytest.MonkeyPatch, empty_db: Path):
    """mlflow_project's set-up in `root`, undone on exit."""
    import mlflow

    from melanoma.config import parse_params

    monkeypatch.chdir(root)
    shutil.copyfile(empty_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # MLflow keeps a process-wide tracking URI that wins over the environment variable.
    mlflow.set_tracking_uri(uri)
    raw = _tiny_params()
    raw["train"]["image_size"] = MODEL_SIZE
    raw["evaluate"]["bootstrap_samples"] = 20
    raw["evaluate"]["external_sets"] = [
        {"name": "tinyext", "path": str(write_external_set(root / "external"))}
    ]
    raw["evaluate"]["operating_point"]["choose_on"] = "tinyext"
    raw["registry"]["model_name"] = "melanoma-test"
    raw["registry"]["promotion"]["bootstrap_samples"] = 200
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    yield parse_params(raw)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def mlflow_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _empty_mlflow_db: Path):
    """A project directory, made the cwd, with MLflow pointed at a new SQLite store in it.

    Writes ./params.yaml (the tiny params with train.image_size=MODEL_SIZE, 20 bootstrap
    samples, registry.model_name "melanoma-test", 200 promotion bootstrap samples, one external
    set "tinyext" (write_external_set at ./external) that chooses the threshold) and returns it
    parsed (melanoma.config.Params).
    """
    with _mlflow_project_at(tmp_path, monkeypatch, _empty_mlflow_db) as params:
        yield params


@pytest.fixture(scope="module")
def module_mlflow_project(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: Path):
    """mlflow_project shared by every test of a module: for what costs seconds to set up in it
    (a served model), built once."""
    root = tmp_path_factory.mktemp("project")
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        _mlflow_project_at(root, monkeypatch, _empty_mlflow_db) as params,
    ):
        yield params


@pytest.fixture
def tiny_classifier() -> Callable:
    """tiny_classifier(probabilities=None, size=MODEL_SIZE) -> keras.Model with the train
    contract: uint8 (None, size, size, 3) in, 9 softmax probabilities (LABELS order) out.

    With `probabilities` (9 values summing to 1) it answers them for every image. Without, its
    answer depends on the image's mean colour, with fixed weights: the same model every call.
    """
    return build_tiny_classifier


def _logger(params) -> Callable:
    """log_model's function, logging in the store of `params` (an mlflow_project's)."""
    import mlflow

    from melanoma.model.logged_model import log_keras_model
    from melanoma.tracking import configure_tracking

    def log(model) -> tuple[str, str]:
        experiment_id = configure_tracking(params.mlflow)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            example = np.zeros((1, *model.input_shape[1:]), np.uint8)
            return run.info.run_id, log_keras_model(model, example).model_uri

    return log


@pytest.fixture
def log_model(mlflow_project) -> Callable:
    """log_model(model) -> (run id, model URI): the model logged as the train stage logs it
    (melanoma.model.logged_model.log_keras_model), in a new run of the mlflow_project store."""
    return _logger(mlflow_project)


@pytest.fixture(scope="module")
def module_log_model(module_mlflow_project) -> Callable:
    """log_model for the module_mlflow_project store."""
    return _logger(module_mlflow_project)


@pytest.fixture
def evaluation_project(mlflow_project) -> tuple[list[str], np.ndarray]:
    """Test images as the augment stage leaves them, in the mlflow_project directory.

    Two TINY_SIZE px PNGs per label under data/ingested/images/test/<label>/, listed with
    split "test" in data/augmented/manifest.csv (plus one "train" row that must be ignored) and
    in data/ingested/manifest.csv (the training collection, which the external set is checked
    against). reports/validation_predictions.csv holds made-up validation probabilities.
    Returns (image paths, label indices) of the test rows.
    """
    return _write_evaluation_project()


@pytest.fixture(scope="module")
def module_evaluation_project(module_mlflow_project) -> tuple[list[str], np.ndarray]:
    """evaluation_project in the module_mlflow_project directory."""
    return _write_evaluation_project()


def _write_evaluation_project() -> tuple[list[str], np.ndarray]:
    """evaluation_project's files, in the current directory."""
    from melanoma.data.images import pixel_sha256
    from melanoma.metrics import predictions_table

    rows, ingested = [], []
    for index, label in enumerate(LABELS):
        for n in range(2):
            path = Path(f"data/ingested/images/test/{label}/ISIC_{index}{n}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_file_bytes(10 * index + n, (TINY_SIZE, TINY_SIZE), "PNG"))
            rows.append({"image_path": path.as_posix(), "label": label, "split": "test"})
            ingested.append(
                {
                    "source_path": f"Test/{label}/ISIC_{index}{n}.jpg",
                    "pixel_sha256": pixel_sha256(Image.open(path)),
                    "status": "accepted",
                }
            )
    rows.append({"image_path": rows[0]["image_path"], "label": LABELS[1], "split": "train"})
    manifest = pd.DataFrame(rows).reindex(columns=AUGMENTED_COLUMNS, fill_value="")
    Path("data/augmented").mkdir(parents=True)
    manifest.to_csv("data/augmented/manifest.csv", index=False)
    ingested_manifest = pd.DataFrame(ingested).reindex(columns=INGEST_COLUMNS, fill_value="")
    ingested_manifest.to_csv("data/ingested/manifest.csv", index=False)
    write_sources_summary(len(ingested_manifest))
    label_indices = np.repeat(np.arange(len(LABELS)), 4)
    noisy = np.random.default_rng(3).dirichlet(np.ones(len(LABELS)), len(label_indices))
    Path("reports").mkdir()
    predictions_table(
        [f"v{i}.png" for i in range(len(label_indices))], label_indices, noisy
    ).to_csv("reports/validation_predictions.csv", index=False)
    test_rows = manifest[manifest["split"] == "test"]
    return test_rows["image_path"].tolist(), test_rows["label"].map(LABELS.index).to_numpy()


# --- the whole pipeline in a git + DVC repository (DVC remote, experiment, team-server tests) --

GIT_IDENTITY = {"user.name": "Pipeline Tests", "user.email": "tests@example.invalid"}


@dataclass(frozen=True)
class PipelineRepo:
    """A git + DVC repository holding a copy of the project.

    run(*command) runs in `root` with the venv first on PATH and MLFLOW_TRACKING_URI set to
    `tracking_uri`; it returns stdout + stderr, and a non-zero exit fails the test showing both.
    """

    root: Path
    tracking_uri: str

    def run(self, *command: str, timeout: float = 300) -> str:
        env = command_env(MLFLOW_TRACKING_URI=self.tracking_uri)
        done = subprocess.run(
            command, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, (
            f"`{' '.join(command)}` failed in {self.root}:\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout + done.stderr

    def clone(
        self, destination: Path, tracking_uri: str | None = None, *, share_cache: bool = False
    ) -> "PipelineRepo":
        """`git clone` of the committed state: no DVC data unless share_cache, which makes this
        repository's DVC cache the clone's (config.local) and checks the data out."""
        self.run("git", "clone", "-q", str(self.root), str(destination))
        clone = PipelineRepo(destination, tracking_uri or self.tracking_uri)
        for key, value in GIT_IDENTITY.items():
            clone.run("git", "config", key, value)
        if share_cache:
            clone.run("dvc", "cache", "dir", "--local", str(self.root / ".dvc" / "cache"))
            clone.run("dvc", "checkout")
        return clone


def _write_tiny_source(root: Path, train_per_label: int = 4) -> None:
    """Per label, `train_per_label` Train and one Test TINY_SIZE px JPEG: a class colour plus
    noise, in folders named as in the real collection."""
    rng = np.random.default_rng(1)
    for index, label in enumerate(LABELS):
        colour = np.array([index * 28, 255 - index * 28, (index * 90) % 256])
        for n in range(train_per_label + 1):
            split = "Test" if n == train_per_label else "Train"
            path = root / split / label.replace("_", " ") / f"ISIC_{index}{n:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = rng.integers(-40, 40, (TINY_SIZE, TINY_SIZE, 3))
            Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(path)


def _write_tiny_table_source(root: Path) -> Path:
    """A HAM10000-like table source: per diagnosis code two TINY_SIZE px JPEGs of one lesion
    (a class colour plus noise), ISIC_9<n>.jpg, listed in metadata.csv."""
    rng = np.random.default_rng(5)
    rows, images = [], {}
    for index, (code, label) in enumerate(HAM_LABELS.items()):
        colour = np.array([LABELS.index(label) * 28, 255 - LABELS.index(label) * 28, 60])
        for n in range(2):
            image_id = f"ISIC_9{index}{n}"
            noise = rng.integers(-40, 40, (TINY_SIZE, TINY_SIZE, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG")
            images[f"{image_id}.jpg"] = buffer.getvalue()
            rows.append({"lesion_id": f"HAM_{index}", "image_id": image_id, "dx": code})
    return write_table_source(root, rows, images)


def tiny_sources(base: Path) -> list[dict]:
    """data.sources of the tiny pipeline: the tiny collection at base/source (written by
    _write_tiny_source) and a tiny table source written at base/ham."""
    return [
        {"name": "isic_collection", "kind": "folders", "path": str(base / "source")},
        table_source_params(_write_tiny_table_source(base / "ham"), name="ham10000"),
    ]


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> PipelineRepo:
    """The project's whole DVC pipeline, run once on tiny data and committed, in a git + DVC
    repository: <tmp>/repo. Session-scoped (~35 s): don't change it, clone it.

    The repository has a copy of dvc.yaml, stages/, melanoma/, .gitignore, .dvcignore and
    .dvc/config (so the project's default DVC remote, relative to the repository), and the
    tiny params: _tiny_params() with 1 epoch, 20 bootstrap samples, data.sources the
    tiny_sources beside it (per label 4 Train + 1 Test TINY_SIZE px JPEGs, and a table source
    of two images of one lesion per diagnosis code),
    validate.reference_labels a one-row reference_labels.csv in the repository, and one external
    set "tinyext" (write_external_set) beside it, which chooses the alert threshold. `dvc repro`
    ran with MLflow in <tmp>/mlflow.db (outside the repository); then `git add -A`, commit: git
    holds dvc.lock and the uncached outputs (models/run.json, reports/*), DVC's cache the data.
    """
    base = tmp_path_factory.mktemp("pipeline")
    source = base / "source"
    _write_tiny_source(source)
    root = copy_project(base / "repo")
    params = _tiny_params()
    params["data"]["sources"] = tiny_sources(base)
    keep_weights_of_sources(params)
    # dvc.yaml names each default source by its index: the tiny pipeline has two.
    pin_source_deps(root / "dvc.yaml", len(params["data"]["sources"]))
    # A reference in the repository (committed, so clones have it). The tiny images' names
    # hold no 7-digit ISIC id: the check runs and finds nothing to compare.
    write_reference_csv(root / "reference_labels.csv", {"ISIC_0000001": "MEL"})
    params["validate"].update(
        min_width=TINY_SIZE,
        min_height=TINY_SIZE,
        min_images_per_class={"train": 2, "test": 1},
        reference_labels="reference_labels.csv",
    )
    params["train"]["epochs"] = 1
    params["evaluate"]["bootstrap_samples"] = 20
    params["evaluate"]["external_sets"] = [
        {"name": "tinyext", "path": str(write_external_set(base / "external"))}
    ]
    params["evaluate"]["operating_point"]["choose_on"] = "tinyext"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    repo = PipelineRepo(root, f"sqlite:///{base / 'mlflow.db'}")
    for key, value in GIT_IDENTITY.items():
        repo.run("git", "config", key, value)
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "tiny pipeline")
    repo.run("dvc", "repro")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "tiny pipeline run")
    return repo


@pytest.fixture
def augmented_project(tiny_project) -> dict:
    """tiny_project after the augment step: data/augmented/manifest.csv and its images."""
    from melanoma.config import parse_params
    from melanoma.data.augmentation import augmented_manifest, plan_augmentation, write_copies
    from melanoma.data.manifest import read_manifest, write_manifest

    params = parse_params(tiny_project)
    validated_path = Path("data/validated/manifest.csv")
    validated = read_manifest(validated_path, VALIDATED_COLUMNS)
    plan = plan_augmentation(
        validated, params.augment, validated_path, Path("data/augmented") / "images"
    )
    write_copies(plan.copies, params.augment)
    write_manifest(augmented_manifest(plan), Path("data/augmented/manifest.csv"), AUGMENTED_COLUMNS)
    return tiny_project
