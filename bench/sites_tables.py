"""The simulated-site tables of `python -m bench.sites table`, from the scores of the `models`
steps (seconds; nothing is trained here).

- **Rules**: for each model (one training source, one seed) and each site it never saw, draws
  of a labelled sample (m melanomas and the site's own share of other lesions, stratified;
  SAMPLE_DRAWS per seed) for m in SAMPLE_MELANOMAS; each rule's threshold from the sample (and, for
  `beta_prior` and `global`, the model's validation split), then on the site's *other*
  images: whether sensitivity >= the target, the specificity, and its gap to the best
  threshold in hindsight (the one that gives exactly the target sensitivity there).
  Evaluate's own rule (Clopper-Pearson) on the sample alone is not listed: its criterion is
  the order statistic's, and it picks the same threshold.
- **Drift**: the model's validation split halved (seeded): one half is the reference; DRAWS
  batches of BATCH images from the other half and from each site are checked against it.
- **Warning**: the share of each group the model's unfamiliar-image score flags.

Each figure is the mean over the seeds, ± the standard deviation over the seeds.
"""

import json
import logging

import numpy as np
import pandas as pd
from scipy.stats import beta

from bench.sites import NON_LESION, RESULTS, VALIDATION, load_scores
from melanoma.evaluation.operating_point import choose_threshold
from melanoma.labels import LABELS, MELANOMA_INDEX
from melanoma.params.sites import SiteParams
from melanoma.sites.drift import DriftReference, check_drift
from melanoma.sites.operating_point import SiteSampleError, choose_site_threshold

log = logging.getLogger(__name__)

SAMPLE_MELANOMAS = (20, 40, 80)
# Samples per site and model: a share near 0.90 is then known to about ±0.03 per model.
SAMPLE_DRAWS = 100
DRAWS = 20  # drift batches per group, as the target counts them
BATCH = 100
MIN_LEFT = 15  # melanomas the site must keep beyond the sample to measure a sensitivity on
PRIOR_MELANOMAS = 20  # beta_prior: validation's weight, in melanomas
GLOBAL = (0.85, 0.95)  # the pipeline's global rule on validation: target, confidence
TABLES = RESULTS / "tables.json"


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


def rule_rows(step: str, scores: dict, params: SiteParams) -> list[dict]:
    rng = np.random.default_rng(0)
    validation = scores[VALIDATION]
    rows = []
    for site, group in scores.items():
        if site in (VALIDATION, NON_LESION, "unfamiliar_threshold"):
            continue
        is_melanoma, melanoma = group["is_melanoma"], group["melanoma"]
        melanomas, others = np.flatnonzero(is_melanoma), np.flatnonzero(~is_melanoma)
        for m in SAMPLE_MELANOMAS:
            if len(melanomas) - m < MIN_LEFT:
                continue
            k = round(m * len(others) / len(melanomas))
            for draw in range(SAMPLE_DRAWS):
                sample = np.concatenate(
                    [rng.choice(melanomas, m, replace=False), rng.choice(others, k, replace=False)]
                )
                rest = np.setdiff1d(np.arange(len(melanoma)), sample)
                rest_melanoma = melanoma[rest][is_melanoma[rest]]
                rest_other = melanoma[rest][~is_melanoma[rest]]
                best = np.quantile(rest_melanoma, 1 - params.target_sensitivity)
                best_specificity = np.mean(rest_other < best)
                for rule, choose in RULES.items():
                    try:
                        threshold = choose(
                            is_melanoma[sample], melanoma[sample], params, validation
                        )
                    except SiteSampleError:
                        continue
                    specificity = np.mean(rest_other < threshold)
                    rows.append(
                        {
                            "step": step,
                            "site": site,
                            "melanomas": m,
                            "draw": draw,
                            "rule": rule,
                            "kept": np.mean(rest_melanoma >= threshold)
                            >= params.target_sensitivity,
                            "specificity": specificity,
                            "gap": best_specificity - specificity,
                        }
                    )
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


def _seed_spread(frame: pd.DataFrame, by: list[str], figures: list[str]) -> pd.DataFrame:
    """Mean over the draws per step, then mean ± sd over the seeds (steps of one source)."""
    per_step = _seedless(frame).groupby(["seedless", "step", *by])[figures].mean().reset_index()
    grouped = per_step.groupby(["seedless", *by])[figures]
    mean, sd = grouped.mean(), grouped.std().fillna(0)
    return mean.map(lambda v: f"{v:.3f}") + " ± " + sd.map(lambda v: f"{v:.3f}")


def _seedless(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(seedless=frame["step"].str.replace(r"_seed\d+$", "", regex=True))


def target_table(rules: pd.DataFrame, drift: pd.DataFrame, warning: pd.DataFrame) -> pd.DataFrame:
    """The issue's targets, each against its figure (mean over seeds and draws) per model
    source and group: the default rule at 20 melanomas, the drift check, the warning."""
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
    return pd.DataFrame(rows, columns=["target", "seedless", "group", "figure", "met"]).round(3)


def print_tables(steps: list[str], params: SiteParams) -> dict[str, pd.DataFrame]:
    """Print (and write to TABLES) the three tables over the steps measured so far."""
    present = [s for s in steps if (RESULTS / s / "scores.npz").exists()]
    missing = sorted(set(steps) - set(present))
    if missing:
        log.warning("not measured yet (run `python -m bench.sites models`): %s", missing)
    if not present:
        return {}
    rules, drift, warning = [], [], []
    for step in present:
        scores = load_scores(step)
        rules += rule_rows(step, scores, params)
        drift += drift_rows(step, scores, params.drift_alpha, params.drift_permutations)
        warning += warning_rows(step, scores)
    rules, drift, warning = pd.DataFrame(rules), pd.DataFrame(drift), pd.DataFrame(warning)
    tables = {
        "rules": _seed_spread(rules, ["site", "melanomas", "rule"], ["kept", "specificity", "gap"]),
        "drift": _seed_spread(drift, ["batch"], ["drifted"]),
        "warning": _seed_spread(warning, ["group"], ["flagged"]),
        "targets": target_table(rules, drift, warning).set_index(["target", "seedless", "group"]),
    }
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        for name, table in tables.items():
            spread = "mean over seeds and draws" if name == "targets" else "mean ± sd over seeds"
            print(f"\n## {name} ({len(present)} models, each trained on one source: {spread})")
            print(table.to_string())
    TABLES.write_text(
        json.dumps(
            {"steps": present} | {k: t.reset_index().to_dict("records") for k, t in tables.items()},
            indent=2,
        )
    )
    return tables
