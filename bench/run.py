"""Benchmark: the common notebook recipe against our pipeline, same data, same machine, one run.

In a temporary directory: our pipeline runs in a clean copy of the project (every stage of a
clean `dvc repro`, timed one by one, then a no-op `dvc repro`), the trained model's
single-image predict latency is measured, and the reference recipe (bench/reference.py) trains
on the first `folders` source (the collection). With --seeds N, the same params are then
trained again with N - 1 other train.seed values, and every quality figure of the test split and
the external sets is reported as mean, standard deviation and range over the N seeds, with
whether any of those trainings moved the registry's champion. The first other seed's `dvc
repro` is timed as a change of what trains (with one seed, half the learning rate is); last,
the params put back train and evaluate a second time: the test metrics must reproduce. One
table is printed and written as JSON.

    python -m bench.run [--quick] [--seeds N] [--out PATH] [--sources NAME ...] [--loops]

--sources keeps only the named sources of params.yaml (say, the collection alone, to see how
each stage's time grows with the data). --loops adds the loops a contributor pays in this
workspace (bench/loops.py: no-op `dvc repro` here and in a fresh clone, a training-only change
by stage, `make test-fast` and `make test`); the workspace must be up to date (`make pipeline`).
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from bench import loops
from bench.pipeline import head_only_change, reproduce, run_pipeline
from bench.process import run_command
from bench.project import (
    PROJECT,
    command_env,
    copy_project,
    pin_source_deps,
    project_reference_labels,
)
from bench.run_results import assemble, clean_test_labels, max_abs_difference
from bench.run_settings import FULL, QUICK, Settings
from bench.run_table import format_table, scaling_rows
from bench.seeds import independent_seeds, train_more_seeds
from bench.source import split_folder, tiny_external_set, tiny_sources
from melanoma import paths
from melanoma.config import PARAMS_FILE, load_params
from melanoma.data.manifest import read_sources_summary
from melanoma.logs import setup_logging
from melanoma.params.data import DataSource, FolderSource

log = logging.getLogger(__name__)

DEFAULT_OUT = PROJECT / "bench" / "results" / "bench.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: a tiny source of a few real files per class, 32 px, 1 epoch each",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train the default params with this many train.seed values (the params' seed, "
        "then the next ones) and report each quality figure's spread (default: 1)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to write (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        metavar="NAME",
        help="only these sources of params.yaml data.sources (default: all of them)",
    )
    parser.add_argument(
        "--scaling",
        nargs="+",
        metavar="NAME",
        help="first time every stage on these sources alone, in a clean copy of its own, so "
        "that each stage's growth with the data is measured in the same run",
    )
    parser.add_argument(
        "--loops",
        action="store_true",
        help="also the contributor's loops in this workspace (bench.loops --tests --clone)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    setup_logging()

    settings = QUICK if args.quick else FULL
    everything = load_params(PROJECT / PARAMS_FILE).data.sources
    names = args.sources or [source.name for source in everything]
    unknown = sorted(set(names + (args.scaling or [])) - {source.name for source in everything})
    if unknown:
        parser.error(f"no source {unknown} in params.yaml data.sources")

    def resolved(chosen: list[str]) -> list[DataSource]:
        return [
            source.model_copy(update={"path": (PROJECT / source.path).resolve()})
            for source in everything
            if source.name in chosen
        ]

    logs = args.out.parent / "logs" / settings.mode
    with tempfile.TemporaryDirectory(prefix="melanoma-bench-") as work:
        results = benchmark(
            resolved(names),
            settings,
            Path(work),
            logs,
            args.seeds,
            resolved(args.scaling) if args.scaling else None,
        )
    if args.loops:
        results["loops"] = loops.measure_all(repeats=3, tests=True, clone=True)
        results["table"] += loops.table_rows(results["loops"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(format_table(results))
    log.info("wrote %s (command output in %s)", args.out, logs)


def benchmark(
    data_sources: list[DataSource],
    settings: Settings,
    work: Path,
    logs: Path,
    seeds: int = 1,
    scaling_sources: list[DataSource] | None = None,
) -> dict:
    """Run both sides in `work` and return the results (see `assemble`); with
    `scaling_sources`, time our pipeline on those first (`scaling_run`)."""
    if settings.tiny_source:
        data_sources = tiny_sources(data_sources, work / "sources", settings.tiny_source)
    scaling = (
        scaling_run(scaling_sources, settings, work / "scaling", logs / "scaling")
        if scaling_sources
        else None
    )
    # The recipe reads class folders: it trains on the first folders source, the collection.
    source = next(s.path for s in data_sources if isinstance(s, FolderSource))
    test_folder = split_folder(source, "test")
    copy = pipeline_copy(data_sources, settings, work)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    env = command_env(MLFLOW_TRACKING_URI=tracking_uri)

    ours = run_pipeline(copy, env, logs)
    params = load_params(copy / PARAMS_FILE)
    latency = run_json(
        "bench.latency",
        [
            *("--model", copy / paths.MODEL_FILE),
            *("--params", copy / PARAMS_FILE, "--images", test_folder),
        ],
        work / "latency.json",
        env,
        logs,
    )
    serving = run_json(
        "bench.serving",
        [
            *("--model", f"models:/{params.registry.model_name}@champion"),
            *("--params", copy / PARAMS_FILE, "--images", test_folder, "--logs", logs),
        ],
        work / "serving.json",
        env,
        logs,
    )
    serving["max_abs_difference_from_predict"] = max_abs_difference(latency, serving)
    reference = run_json(
        "bench.reference",
        [
            "--source",
            source,
            "--image-size",
            settings.reference_image_size,
            "--epochs",
            settings.reference_epochs,
        ],
        work / "reference.json",
        env,
        logs,
    )
    predicted = latency["predictions"]
    predicted["source_path"] = [
        Path(path).resolve().relative_to(source).as_posix() for path in predicted.pop("path")
    ]
    clean_test = clean_test_labels(copy / paths.VALIDATED_MANIFEST)
    # After the latency and the recipe: they use the model of the params' own seed.
    more_seeds = independent_seeds(params.train, seeds)[1:]
    seed_runs = train_more_seeds(copy, env, logs, more_seeds, tracking_uri)
    # Another seed is a change of what trains: its `dvc repro` is timed as one, and only
    # without one is a learning rate halved for it (a training fewer).
    if seed_runs:
        ours["head_only_repro_seconds"] = seed_runs[0]["seconds"]
        ours["head_only_stages_run"] = seed_runs[0]["stages_run"]
    else:
        ours |= head_only_change(copy, env, logs)
    train = params.train
    ours |= reproduce(
        copy, env, logs, ours, {"seed": train.seed, "learning_rate": train.learning_rate}
    )
    ours["accepted_images"] = accepted_images(copy)
    results = assemble(
        settings, data_sources, ours, latency, serving, reference, clean_test, params, seed_runs
    )
    if scaling:
        results["scaling"] = scaling
        results["table"] += scaling_rows(scaling, ours)
    return results


def pipeline_copy(data_sources: list[DataSource], settings: Settings, work: Path) -> Path:
    """A copy of the project in work/project whose params read `data_sources` and the external
    sets by absolute path, with the project's reference labels and the mode's overrides."""
    pinned = {
        "data.sources": [s.model_dump(mode="json") for s in data_sources],
        "evaluate.external_sets": external_sets(settings, work),
        **project_reference_labels(),
    }
    copy = copy_project(work / "project", {**pinned, **settings.overrides})
    pin_source_deps(copy / "dvc.yaml", len(data_sources))
    return copy


def accepted_images(copy: Path) -> int:
    """Images ingest accepted in a pipeline copy, all sources together."""
    return sum(s["accepted"] for s in read_sources_summary(copy / paths.SOURCES_SUMMARY))


def scaling_run(data_sources: list[DataSource], settings: Settings, work: Path, logs: Path) -> dict:
    """Our pipeline's stage times, no-op and head-only change on `data_sources` alone, in a
    clean copy of its own (no reference recipe, no predict latency, one seed)."""
    if settings.tiny_source:
        data_sources = tiny_sources(data_sources, work / "sources", settings.tiny_source)
    copy = pipeline_copy(data_sources, settings, work)
    env = command_env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    timed = run_pipeline(copy, env, logs) | head_only_change(copy, env, logs)
    return {
        "sources": [s.name for s in data_sources],
        "accepted_images": accepted_images(copy),
        **{
            key: timed[key]
            for key in (
                "stage_seconds",
                "full_repro_seconds",
                "noop_repro_seconds",
                "head_only_repro_seconds",
                "peak_rss_mib",
            )
        },
    }


def external_sets(settings: Settings, work: Path) -> list[dict]:
    """The project's external sets with absolute paths (tiny copies in quick mode)."""
    sets = []
    for external in load_params(PROJECT / PARAMS_FILE).evaluate.external_sets:
        folder = (PROJECT / external.path).resolve()
        if settings.tiny_external:
            folder = tiny_external_set(
                folder, work / "external" / external.name, settings.tiny_external
            )
        sets.append({"name": external.name, "path": str(folder)})
    return sets


def run_json(module: str, arguments: list, out: Path, env: dict[str, str], logs: Path) -> dict:
    """Run `python -m <module> ... --out <out>` from the project root; return the JSON it wrote."""
    command = [sys.executable, "-m", module, *map(str, arguments), "--out", str(out)]
    run_command(command, PROJECT, env, logs / f"{module.removeprefix('bench.')}.log")
    return json.loads(out.read_text())


if __name__ == "__main__":
    main()
