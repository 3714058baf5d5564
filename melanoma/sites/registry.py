"""A site's operating point, stored with the registry version it was calibrated for.

Each site is one version tag, `site.<name>`, holding its record as JSON: calibrating again
replaces it at once, a version's sites travel with it (the MLflow UI shows them beside its
other tags), and another version, trained differently, has sites of its own.
"""

import json
import re
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, ValidationError

from melanoma.registry.promotion import MODEL_URI, RegistryError, champion_version

SITE_TAG_PREFIX = "site."
# The last section of a version's description (its model card): rewritten on each calibration.
SITES_HEADING = "## Sites"
# A site's name is part of a tag key and of the command line: lower case, digits, underscores.
SITE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class SiteError(ValueError):
    """A site name or site that cannot be used; the message names it and the known ones."""


class SiteRecord(BaseModel):
    """What `melanoma site calibrate` stored for one site of one version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    threshold: float
    images: int
    melanomas: int
    sample_sensitivity: float
    sample_specificity: float
    # the version's global threshold, and what it gives on the same sample
    global_threshold: float
    global_sensitivity: float
    global_specificity: float
    target_sensitivity: float
    confidence: float
    folder: str
    calibrated_at: str


def check_site_name(name: str) -> str:
    if not SITE_NAME.fullmatch(name):
        raise SiteError(
            f"site name {name!r} is not a plain identifier: lower-case letters, digits and "
            "underscores, starting with a letter (at most 64)"
        )
    return name


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def resolve_version(client: MlflowClient, model_name: str, version: str | None) -> str:
    """`version` if the model has it, else (None) the champion's; RegistryError otherwise."""
    if version is None:
        champion = champion_version(client, model_name)
        if champion is None:
            raise RegistryError(f"{model_name} has no champion: give --version")
        return champion
    try:
        client.get_model_version(model_name, version)
    except MlflowException as error:
        raise RegistryError(f"{model_name} has no version {version}: {error.message}") from None
    return version


def store_site(client: MlflowClient, model_name: str, version: str, record: SiteRecord) -> None:
    client.set_model_version_tag(
        model_name, version, SITE_TAG_PREFIX + record.name, record.model_dump_json()
    )


def version_sites(client: MlflowClient, model_name: str, version: str) -> dict[str, SiteRecord]:
    """The sites of a version, by name (a tag that is not a site record is skipped)."""
    return sites_of_tags(client.get_model_version(model_name, version).tags)


def all_sites(client: MlflowClient, model_name: str) -> list[tuple[str, SiteRecord]]:
    """(version, record) of every site of every version of the model, by version then name."""
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException as error:
        raise RegistryError(f"{model_name}: {error.message}") from None
    rows = []
    for version in sorted(versions, key=lambda v: int(v.version)):
        rows += [(version.version, record) for record in sites_of_tags(version.tags).values()]
    return rows


def sites_of_tags(tags: dict[str, str]) -> dict[str, SiteRecord]:
    sites = {}
    for key, value in sorted(tags.items()):
        if key.startswith(SITE_TAG_PREFIX):
            try:
                sites[key.removeprefix(SITE_TAG_PREFIX)] = SiteRecord(**json.loads(value))
            except (ValueError, TypeError, ValidationError):
                continue  # not written by `site calibrate`: not a site
    return sites


def site_for_reference(client: MlflowClient, reference: str, site: str) -> tuple[str, SiteRecord]:
    """(version, the site's record) of the registered version that a `models:/name@alias` or
    `models:/name/N` reference names; SiteError naming the version's known sites."""
    match = MODEL_URI.fullmatch(reference)
    if match is None:
        raise SiteError(
            f"--site needs a registered version (models:/name@alias or models:/name/N), "
            f"not {reference}: sites are stored with registry versions"
        )
    name, alias, number = match.groups()
    try:
        version = (
            client.get_model_version_by_alias(name, alias).version
            if alias
            else client.get_model_version(name, number).version
        )
    except MlflowException as error:
        raise RegistryError(f"{reference}: {error.message}") from None
    return version, find_site(name, version, version_sites(client, name, version), site)


def served_site(run_id: str, model_id: str | None, site: str) -> SiteRecord:
    """The record of `site` for the registered version of a served model (its run and logged
    model id); SiteError if the model is not a registered version or has no such site."""
    versions = MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    versions = [v for v in versions if model_id is None or v.source == f"models:/{model_id}"]
    if not versions:
        raise SiteError(
            f"site {site!r}: the served model is not a registered version, so it has no sites"
        )
    version = versions[0]
    return find_site(version.name, version.version, sites_of_tags(version.tags), site)


def find_site(model_name: str, version: str, sites: dict[str, SiteRecord], site: str) -> SiteRecord:
    """The record of `site` among a version's sites; SiteError naming those it has."""
    if site not in sites:
        known = ", ".join(sites) or "none: `melanoma site calibrate NAME DIR` adds one"
        raise SiteError(f"{model_name} v{version} has no site {site!r}; its sites: {known}")
    return sites[site]


def sites_section(sites: dict[str, SiteRecord]) -> str:
    """The model card's section listing a version's sites (markdown)."""
    lines = [
        SITES_HEADING,
        "",
        "The alert threshold of each clinic that calibrated this version on a labelled sample "
        "(`melanoma site calibrate`; `melanoma predict --site NAME`). Sensitivity and "
        "specificity are on the site's sample, at its threshold and at the global one.",
        "",
        "| site | threshold | images | melanomas | sensitivity | specificity "
        "| global sens. | global spec. | calibrated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for record in sites.values():
        lines.append(
            f"| {record.name} | {record.threshold:.4g} | {record.images} | {record.melanomas} "
            f"| {record.sample_sensitivity:.3f} | {record.sample_specificity:.3f} "
            f"| {record.global_sensitivity:.3f} | {record.global_specificity:.3f} "
            f"| {record.calibrated_at} |"
        )
    return "\n".join(lines)


def refresh_card_sites(client: MlflowClient, model_name: str, version: str) -> None:
    """Make the version's description (its model card) end with its current sites."""
    current = client.get_model_version(model_name, version)
    card = (current.description or "").split("\n" + SITES_HEADING + "\n")[0].rstrip()
    sites = sites_of_tags(current.tags)
    if sites:
        card += "\n\n" + sites_section(sites)
    if card != (current.description or ""):
        client.update_model_version(model_name, version, description=card)
