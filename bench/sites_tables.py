"""The simulated-site tables of `python -m bench.sites table`, from the scores of the `models`
steps (nothing is trained here; the site head's fits take minutes, the rest seconds).

- **Rules**: for each model (one training source, one seed) and each site it never saw, draws
  of a labelled sample (m melanomas and the site's own share of other lesions, stratified;
  SAMPLE_DRAWS per seed) for m in SAMPLE_MELANOMAS; each rule's threshold from the sample (and, for
  `beta_prior` and `global`, the model's validation split), then on the site's *other*
  images: whether sensitivity >= the target, the specificity, and its gap to the best
  threshold in hindsight (the one that gives exactly the target sensitivity there).
  Evaluate's own rule (Clopper-Pearson) on the sample alone is not listed: its criterion is
  the order statistic's, and it picks the same threshold.
- **Head**: on the first HEAD_DRAWS of the same samples, the site head (melanoma.sites.head)
  fitted and gated on the sample as `site calibrate` does (`sites.adapt: auto`), its threshold
  on the out-of-fold scores (`head_threshold`): the share of samples adopting it, and on the
  site's other images the share keeping the promise, the specificity and the melanoma AUC,
  without and with adaptation.
- **Drift**: the model's validation split halved (seeded): one half is the reference; DRAWS
  batches of BATCH images from the other half and from each site are checked against it.
- **Warning**: the share of each group the model's unfamiliar-image score flags.

Each figure is the mean over the seeds, ± the standard deviation over the seeds.
"""

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import beta
from sklearn.metrics import roc_auc_score

from bench.sites_scores import NON_LESION, RESULTS, VALIDATION, load_scores
from melanoma.evaluation.operating_point import choose_threshold
from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.params.sites import SiteParams
from melanoma.sites.drift import DriftReference, check_drift
from melanoma.sites.head import FeatureIdentity, decide_head, head_threshold
from melanoma.sites.operating_point import SiteSampleError, choose_site_threshold

log = logging.getLogger(__name__)

SAMPLE_MELANOMAS = (20, 40, 80)
# Samples per site and model: a share near 0.90 is then known to about ±0.03 per model.
SAMPLE_DRAWS = 100
HEAD_DRAWS = 100  # the same samples as the rules' first HEAD_DRAWS (each fits 6 heads)
DRAWS = 20  # drift batches per group, as the target counts them
BATCH = 100
MIN_LEFT = 15  # melanomas the site must keep beyond the sample to measure a sensitivity on
PRIOR_MELANOMAS = 20  # beta_prior: validation's weight, in melanomas
GLOBAL = (0.85, 0.95)  # the pipeline's global rule on validation: target, confidence
TABLES = RESULTS / "tables.json"
LOCO_TABLES = RESULTS / "tables_loco.json"  # of the default's leave-one-out models


@dataclass(frozen=True)
class SiteSample:
    """One labelled sample drawn at a site: its rows (`sample`) and the site's other rows."""

    site: str
    group: dict  # the site's scores: melanoma, features, unfamiliar, is_melanoma
    melanomas: int
    draw: int
    sample: np.ndarray
    rest: np.ndarray
    best_specificity: float  # on the rest, at the threshold giving exactly the target there


def _two_class(is_melanoma: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label indices and probabilities with only P(melanoma) meaningful (operating_point's)."""
    label_indices = np.where(is_melanoma, MELANOMA_INDEX, LABELS.index("nevus"))
    probabilities = np.zeros((len(scores), len(LABELS)))
    probabilities[:, MELANOMA_INDEX] = scores
    return label_indices, probabilities


def beta_prior(is_melanoma, scores, params: SiteParams, validation) -> float:
    """The highest threshold whose sensitivity, Beta posterior of the sample's counts with
    validation's sensitivity there as a prior of PRIOR_MELANOMAS melanomas, reaches the target
    with the confidence."""
    val_melanoma = np.sort(validation["melanoma"][validation["is_melanoma"]])
    melanoma = np.sort(scores[is_melanoma])
    thresholds = np.unique(np.concatenate([melanoma, val_melanoma]))[::-1]
    prior = 1 - np.searchsorted(val_melanoma, thresholds) / len(val_melanoma)
    caught = len(melanoma) - np.searchsorted(melanoma, thresholds)
    a = 1 + PRIOR_MELANOMAS * prior + caught
    b = 1 + PRIOR_MELANOMAS * (1 - prior) + len(melanoma) - caught
    reached = np.flatnonzero(beta.sf(params.target_sensitivity, a, b) >= params.confidence)
    return float(thresholds[reached[0]]) if len(reached) else float(melanoma[0])


def site_rule(name: str):
    """A rule of melanoma.sites.operating_point (`sites.rule`), as the bench calls rules."""

    def choose(is_melanoma, scores, params: SiteParams, _validation) -> float:
        return choose_site_threshold(
            is_melanoma, scores, params.model_copy(update={"rule": name})
        ).threshold

    return choose


def global_threshold(_is_melanoma, _scores, _params, validation) -> float:
    """No site threshold: the model's own, chosen on validation as evaluate's `validation`."""
    return choose_threshold(
        *_two_class(validation["is_melanoma"], validation["melanoma"]), *GLOBAL
    ).value


RULES = {
    "order_statistic (default)": site_rule("order_statistic"),
    "logit_normal": site_rule("logit_normal"),
    "beta_prior": beta_prior,
    "global": global_threshold,
}


def site_samples(scores: dict, params: SiteParams, draws: int) -> Iterator[SiteSample]:
    """Every labelled sample of the bench (seeded: the same for every table that draws them),
    with the site's other images."""
    rng = np.random.default_rng(0)
    for site, group in scores.items():
        if site in (VALIDATION, NON_LESION, "unfamiliar_threshold"):
            continue
        is_melanoma, melanoma = group["is_melanoma"], group["melanoma"]
        melanomas, others = np.flatnonzero(is_melanoma), np.flatnonzero(~is_melanoma)
        for m in SAMPLE_MELANOMAS:
            if len(melanomas) - m < MIN_LEFT:
                continue
            k = round(m * len(others) / len(melanomas))
            for draw in range(draws):
                sample = np.concatenate(
                    [rng.choice(melanomas, m, replace=False), rng.choice(others, k, replace=False)]
                )
                rest = np.setdiff1d(np.arange(len(melanoma)), sample)
                rest_melanoma = melanoma[rest][is_melanoma[rest]]
                best = np.quantile(rest_melanoma, 1 - params.target_sensitivity)
                best_specificity = np.mean(melanoma[rest][~is_melanoma[rest]] < best)
                yield SiteSample(site, group, m, draw, sample, rest, best_specificity)


def rule_rows(step: str, scores: dict, params: SiteParams) -> list[dict]:
    validation = scores[VALIDATION]
    rows = []
    for drawn in site_samples(scores, params, SAMPLE_DRAWS):
        is_melanoma, melanoma = drawn.group["is_melanoma"], drawn.group["melanoma"]
        sample, rest = drawn.sample, drawn.rest
        rest_melanoma = melanoma[rest][is_melanoma[rest]]
        rest_other = melanoma[rest][~is_melanoma[rest]]
        for rule, choose in RULES.items():
            try:
                threshold = choose(is_melanoma[sample], melanoma[sample], params, validation)
            except SiteSampleError:
                continue
            specificity = np.mean(rest_other < threshold)
            rows.append(
                {
                    "step": step,
                    "site": drawn.site,
                    "melanomas": drawn.melanomas,
                    "draw": drawn.draw,
                    "rule": rule,
                    "kept": np.mean(rest_melanoma >= threshold) >= params.target_sensitivity,
                    "specificity": specificity,
                    "gap": drawn.best_specificity - specificity,
                }
            )
    return rows


def _at_threshold(
    is_melanoma: np.ndarray, scores: np.ndarray, threshold: float, target: float
) -> dict[str, float]:
    """Kept (sensitivity >= target), specificity and melanoma AUC of scores of the rest."""
    return {
        "kept": float(np.mean(scores[is_melanoma] >= threshold) >= target),
        "specificity": float(np.mean(scores[~is_melanoma] < threshold)),
        "auc": float(roc_auc_score(is_melanoma, scores)),
    }


def head_rows(step: str, scores: dict, params: SiteParams) -> list[dict]:
    """Per sample, the site's figures on its other images without the site head (the default
    rule on the model's scores) and with it (`sites.adapt: auto`: the head where the gate
    adopts it, its threshold on the out-of-fold scores; the model's otherwise)."""
    rows = []
    for drawn in site_samples(scores, params, HEAD_DRAWS):
        is_melanoma, melanoma = drawn.group["is_melanoma"], drawn.group["melanoma"]
        features = drawn.group["features"]
        sample, rest = drawn.sample, drawn.rest
        try:
            without = choose_site_threshold(is_melanoma[sample], melanoma[sample], params)
        except SiteSampleError:
            continue
        identity = FeatureIdentity("bench", features.shape[1], "")
        decision = decide_head(
            features[sample], melanoma[sample], is_melanoma[sample], identity, params
        )
        target = params.target_sensitivity
        figures = {
            "without": _at_threshold(is_melanoma[rest], melanoma[rest], without.threshold, target)
        }
        if decision.head is not None and decision.out_of_fold is not None:  # adopted
            threshold = head_threshold(is_melanoma[sample], decision.out_of_fold, params).threshold
            adapted = decision.head.melanoma_probability(features[rest], melanoma[rest])
            figures["with"] = _at_threshold(is_melanoma[rest], adapted, threshold, target)
        else:
            figures["with"] = figures["without"]
        row = {
            "step": step,
            "site": drawn.site,
            "melanomas": drawn.melanomas,
            "draw": drawn.draw,
            "adopted": float(decision.adopted),
        }
        for kind, values in figures.items():
            row |= {f"{name} {kind}": value for name, value in values.items()}
        rows.append(row)
    return rows


def drift_rows(step: str, scores: dict, alpha: float, permutations: int) -> list[dict]:
    rng = np.random.default_rng(0)
    threshold = scores["unfamiliar_threshold"]
    validation = scores[VALIDATION]
    halves = rng.permutation(len(validation["melanoma"]))
    reference_rows, held_out = np.sort(halves[::2]), np.sort(halves[1::2])
    reference = DriftReference(
        validation["melanoma"][reference_rows], validation["features"][reference_rows]
    )
    batches = {"validation (held out)": (validation, held_out)}
    for site, group in scores.items():
        if site not in (VALIDATION, NON_LESION, "unfamiliar_threshold"):
            batches[site] = (group, np.arange(len(group["melanoma"])))
    rows = []
    for name, (group, candidates) in batches.items():
        familiar = candidates[group["unfamiliar"][candidates] <= threshold]
        for draw in range(DRAWS):
            batch = rng.choice(familiar, min(BATCH, len(familiar)), replace=False)
            result = check_drift(
                reference,
                group["melanoma"][batch],
                group["features"][batch],
                alpha,
                permutations,
                seed=draw,
            )
            rows.append({"step": step, "batch": name, "draw": draw, "drifted": result.drifted})
    return rows


def warning_rows(step: str, scores: dict) -> list[dict]:
    threshold = scores["unfamiliar_threshold"]
    return [
        {"step": step, "group": group, "flagged": float(np.mean(values["unfamiliar"] > threshold))}
        for group, values in scores.items()
        if group != "unfamiliar_threshold"
    ]


# The head table's columns: the share of samples adopting it, then each figure on the site's
# other images without and with adaptation.
HEAD_FIGURES = [
    "adopted",
    *(f"{name} {kind}" for name in ("kept", "specificity", "auc") for kind in ("without", "with")),
]


def _seed_spread(frame: pd.DataFrame, by: list[str], figures: list[str]) -> pd.DataFrame:
    """Mean over the draws per step, then mean ± sd over the seeds (steps of one source)."""
    per_step = _seedless(frame).groupby(["seedless", "step", *by])[figures].mean().reset_index()
    grouped = per_step.groupby(["seedless", *by])[figures]
    mean, sd = grouped.mean(), grouped.std().fillna(0)
    return mean.map(lambda v: f"{v:.3f}") + " ± " + sd.map(lambda v: f"{v:.3f}")


def _seedless(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(seedless=frame["step"].str.replace(r"_seed\d+$", "", regex=True))


def head_targets(head: pd.DataFrame) -> list[tuple]:
    """The site head's targets per model source and site, samples of 20 melanomas: the share
    keeping the promise with adaptation; where the head is adopted in most samples, median
    specificity up by >= 0.10, elsewhere down by <= 0.01 (medians over seeds and draws)."""
    rows = []
    at_20 = _seedless(head[head["melanomas"] == 20])
    for (source, site), samples in at_20.groupby(["seedless", "site"]):
        kept = samples["kept with"].mean()
        rows.append(("head: kept >= 0.90 of samples of 20", source, site, kept, kept >= 0.9))
        change = samples["specificity with"].median() - samples["specificity without"].median()
        if samples["adopted"].mean() > 0.5:
            rows.append(
                ("head adopted: median specificity +0.10", source, site, change, change >= 0.1)
            )
        else:
            rows.append(
                (
                    "head mostly not adopted: median specificity -0.01 at most",
                    source,
                    site,
                    change,
                    change >= -0.01,
                )
            )
    return rows


def target_table(
    rules: pd.DataFrame, drift: pd.DataFrame, warning: pd.DataFrame, head: pd.DataFrame
) -> pd.DataFrame:
    """The issue's targets, each against its figure (mean over seeds and draws) per model
    source and group: the default rule at 20 melanomas, the drift check, the warning, the
    site head."""
    default = rules[(rules["rule"] == "order_statistic (default)") & (rules["melanomas"] == 20)]
    per_site = _seedless(default).groupby(["seedless", "site"])[["kept", "gap"]].mean()
    drifted = _seedless(drift).groupby(["seedless", "batch"])["drifted"].mean()
    flagged = _seedless(warning).groupby(["seedless", "group"])["flagged"].mean()
    rows = []
    for (source, site), row in per_site.iterrows():
        rows.append(
            ("kept >= 0.90 of samples of 20", source, site, row["kept"], row["kept"] >= 0.9)
        )
        rows.append(("specificity gap <= 0.15", source, site, row["gap"], row["gap"] <= 0.15))
    for (source, batch), share in drifted.items():
        held_out = batch == "validation (held out)"
        met = share <= 0.05 if held_out else share >= 0.95
        target = "drift flags <= 5%" if held_out else "drift flags the site (>= 95%)"
        rows.append((target, source, batch, share, met))
    for (source, group), share in flagged.items():
        if group == "validation":
            rows.append(("warning <= 2% of validation", source, group, share, share <= 0.02))
        elif group == NON_LESION:
            rows.append(("warning >= 95% of non-lesions", source, group, share, share >= 0.95))
        else:
            rows.append(("warning <= 10% of another source", source, group, share, share <= 0.1))
    rows += head_targets(head)
    return pd.DataFrame(rows, columns=["target", "seedless", "group", "figure", "met"]).round(3)


def print_tables(
    steps: list[str], params: SiteParams, tables_file: Path = TABLES
) -> dict[str, pd.DataFrame]:
    """Print (and write to `tables_file`) the tables over the steps measured so far."""
    present = [s for s in steps if (RESULTS / s / "scores.npz").exists()]
    missing = sorted(set(steps) - set(present))
    if missing:
        log.warning("not measured yet (run `python -m bench.sites models`): %s", missing)
    if not present:
        return {}
    rules, drift, warning, head = [], [], [], []
    for step in present:
        scores = load_scores(step)
        rules += rule_rows(step, scores, params)
        drift += drift_rows(step, scores, params.drift_alpha, params.drift_permutations)
        warning += warning_rows(step, scores)
        head += head_rows(step, scores, params)
    rules, drift, warning = pd.DataFrame(rules), pd.DataFrame(drift), pd.DataFrame(warning)
    head = pd.DataFrame(head)
    targets = target_table(rules, drift, warning, head)
    tables = {
        "rules": _seed_spread(rules, ["site", "melanomas", "rule"], ["kept", "specificity", "gap"]),
        "head": _seed_spread(head, ["site", "melanomas"], HEAD_FIGURES),
        "drift": _seed_spread(drift, ["batch"], ["drifted"]),
        "warning": _seed_spread(warning, ["group"], ["flagged"]),
        "targets": targets.set_index(["target", "seedless", "group"]),
    }
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        for name, table in tables.items():
            spread = "mean over seeds and draws" if name == "targets" else "mean ± sd over seeds"
            print(f"\n## {name} ({len(present)} models: {spread})")
            print(table.to_string())
    tables_file.write_text(
        json.dumps(
            {"steps": present} | {k: t.reset_index().to_dict("records") for k, t in tables.items()},
            indent=2,
        )
    )
    return tables
