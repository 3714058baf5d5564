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

import pandas as pd
import yaml

from bench.ablation_runs import run, summary
from bench.ablation_steps import STEPS, run_step
from melanoma.logs import setup_logging


def parse_override(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    return name, yaml.safe_load(value)


def main() -> None:

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"The stronger-model steps, resumable (bench/ablation_steps.py): {', '.join(STEPS)}",
    )
    parser.add_argument("name", nargs="?", help="a step, or a configuration's name in the results")
    parser.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE", help="dotted param override"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--summary", action="store_true", help="print the table of results")
    args = parser.parse_args()
    setup_logging()
    if args.name in STEPS:
        result = run_step(args.name)
        with pd.option_context("display.width", 250, "display.max_columns", 50):
            print(pd.DataFrame(result["table"]).set_index("name").T.to_string())
    elif args.name:
        overrides = dict(parse_override(text) for text in args.set)
        for seed in args.seeds:
            run(args.name, overrides, seed)
    if args.summary:
        with pd.option_context("display.width", 250, "display.max_columns", 50):
            print(summary().T.to_string())


if __name__ == "__main__":
    main()
