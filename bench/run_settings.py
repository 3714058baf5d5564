"""The two modes of `python -m bench.run`: what each side trains on and for how long.

FULL: the whole sources, our params as params.yaml sets them, the recipe at 180 px for 30
epochs. QUICK (`--quick`, the test suite's smoke run): a few real files per class, 32 px, one
epoch each.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    mode: str
    reference_image_size: int
    reference_epochs: int
    # Params of our pipeline changed in the copy (dotted names, as `dvc exp run -S`).
    overrides: dict[str, object] = field(default_factory=dict)
    # Real files per label and split copied into a tiny source; None: the whole source.
    tiny_source: dict[str, int] | None = None
    # Real files per class folder of each external set copied; None: the whole sets.
    tiny_external: int | None = None


FULL = Settings("full", reference_image_size=180, reference_epochs=30)
QUICK = Settings(
    "quick",
    reference_image_size=32,
    reference_epochs=1,
    overrides={
        "ingest.image_size": 32,
        "validate.min_images_per_class": {"train": 2, "test": 1},
        "augment.val_fraction": 0.25,
        "augment.target_per_class": 8,
        "train.image_size": 32,
        "train.filters": [8, 16],
        "train.batch_size": 8,
        "train.epochs": 1,
        "train.warmup_epochs": 0,
        # One model per seed: the smoke run checks the table, an ensemble would triple each of
        # its four trainings (tests/model/test_ensemble.py trains ensembles).
        "train.ensemble": 1,
        "evaluate.bootstrap_samples": 20,
        "registry.promotion": {"bootstrap_samples": 100, "confidence": 0.95, "seed": 42},
    },
    tiny_source={"train": 6, "test": 2},
    tiny_external=4,
)
