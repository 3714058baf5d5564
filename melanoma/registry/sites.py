"""A site's operating point, stored with the registry version it was calibrated for.

Each site is one version tag, `site.<name>`, holding its record as JSON: calibrating again
replaces it at once, a version's sites travel with it (the MLflow UI shows them beside its
other tags), and another version, trained differently, has sites of its own. An adopted site
head (melanoma.sites.head; a few KB, too large for a tag) is an artifact of the version's run,
`sites/v<version>/<name>/head.npz`, overwritten on re-calibration; the record holds its
SHA-256, so a head that is not the one calibrated (damaged, replaced) is refused.
"""

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from melanoma.errors import MelanomaError
from melanoma.inference.unfamiliar import UnfamiliarDetector
from melanoma.registry.promotion import (
    MODEL_URI,
    RegistryError,
    champion_version,
    registered_version,
)
from melanoma.sites.head import SiteHead, SiteHeadError, check_head_features
from melanoma.sites.record import SiteRecord

SITE_TAG_PREFIX = "site."
# The last section of a version's description (its model card): rewritten on each calibration.
SITES_HEADING = "## Sites"
# A site's name is part of a tag key and of the command line: lower case, digits, underscores.
SITE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
HEAD_FILE = "head.npz"


class SiteError(MelanomaError, ValueError):
    """A site name or site that cannot be used; the message names it and the known ones."""


@dataclass(frozen=True)
class VersionSite:
    """A site's record with the registered version (and its run) it belongs to."""

    model_name: str
    version: str
    run_id: str | None
    record: SiteRecord

    @property
    def label(self) -> str:
        return f"site {self.record.name} of {self.model_name} v{self.version}"


def check_site_name(name: str) -> str:
    if not SITE_NAME.fullmatch(name):
        raise SiteError(
            f"site name {name!r} is not a plain identifier: lower-case letters, digits and "
            "underscores, starting with a letter (at most 64)"
        )
    return name


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


def head_artifact_folder(version: str, site: str) -> str:
    # The version is in the path: several versions can be registered from one run.
    return f"sites/v{version}/{site}"


def store_site(
    client: MlflowClient,
    model_name: str,
    version: str,
    record: SiteRecord,
    head: SiteHead | None = None,
) -> SiteRecord:
    """Store the site's record (and its adopted head first, its checksum in the record); the
    record as stored."""
    if head is not None:
        run_id = client.get_model_version(model_name, version).run_id
        if not run_id:
            raise SiteError(f"{model_name} v{version} has no run to keep {record.name}'s head in")
        data = head.to_bytes()
        with tempfile.TemporaryDirectory(prefix="site-head-") as folder:
            (Path(folder) / HEAD_FILE).write_bytes(data)
            client.log_artifact(
                run_id, str(Path(folder) / HEAD_FILE), head_artifact_folder(version, record.name)
            )
        record = record.model_copy(update={"head_sha256": hashlib.sha256(data).hexdigest()})
    client.set_model_version_tag(
        model_name, version, SITE_TAG_PREFIX + record.name, record.model_dump_json()
    )
    return record


def load_site_head(client: MlflowClient, site: VersionSite) -> SiteHead | None:
    """The site's adopted head (None if the site has none), as calibrated: SiteHeadError
    naming the site and version if it cannot be read or is not the one its record names."""
    if not site.record.head_adopted:
        return None
    remedy = f"calibrate the site again (`melanoma site calibrate {site.record.name} DIR`)"
    path = f"{head_artifact_folder(site.version, site.record.name)}/{HEAD_FILE}"
    if site.run_id is None:
        raise SiteHeadError(f"{site.label}: its version has no run, which holds {path}; {remedy}")
    try:
        with tempfile.TemporaryDirectory(prefix="site-head-") as folder:
            data = Path(client.download_artifacts(site.run_id, path, folder)).read_bytes()
    except (MlflowException, OSError) as error:
        raise SiteHeadError(
            f"{site.label}: its head {path} cannot be read ({error}); {remedy}"
        ) from None
    if hashlib.sha256(data).hexdigest() != site.record.head_sha256:
        raise SiteHeadError(
            f"{site.label}: its head {path} is not the one calibrated (damaged or replaced: "
            f"its checksum differs from the site's record); {remedy}"
        )
    try:
        return SiteHead.from_bytes(data)
    except ValueError as error:
        raise SiteHeadError(f"{site.label}: {path} is {error}; {remedy}") from None


def usable_site_head(
    client: MlflowClient, site: VersionSite, detector: UnfamiliarDetector | None
) -> SiteHead | None:
    """The site's adopted head (None if none), checked against the features `detector` (the
    version's) computes; SiteHeadError naming the site and version otherwise."""
    head = load_site_head(client, site)
    if head is not None:
        check_head_features(head, detector, site.label)
    return head


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


def site_for_reference(client: MlflowClient, reference: str, site: str) -> VersionSite:
    """The site of the registered version that a `models:/name@alias` or `models:/name/N`
    reference names; SiteError naming the version's known sites."""
    if MODEL_URI.fullmatch(reference) is None:
        raise SiteError(
            f"--site needs a registered version (models:/name@alias or models:/name/N), "
            f"not {reference}: sites are stored with registry versions"
        )
    version = registered_version(client, reference)
    name = version.name
    record = find_site(name, version.version, version_sites(client, name, version.version), site)
    return VersionSite(name, version.version, version.run_id, record)


def served_site(run_id: str, model_id: str | None, site: str) -> VersionSite:
    """The record of `site` for the registered version of a served model (its run and logged
    model id); SiteError if the model is not a registered version or has no such site."""
    of_run = MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    versions = [v for v in of_run if model_id is None or v.source == f"models:/{model_id}"]
    if not versions:
        raise SiteError(
            f"site {site!r}: the served model is not a registered version, so it has no sites"
        )
    version = versions[0]
    record = find_site(version.name, version.version, sites_of_tags(version.tags), site)
    return VersionSite(version.name, version.version, version.run_id, record)


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
        "specificity are on the site's sample, at its threshold and at the global one. Where "
        "the site head was adopted (head: yes), the site's P(melanoma) is the head's and its "
        "figures are on the head's out-of-fold scores; the AUCs are the model's on the sample "
        "and the head's out of fold.",
        "",
        "| site | threshold | images | melanomas | sensitivity | specificity "
        "| global sens. | global spec. | head | model AUC | head AUC (out of fold) | calibrated |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in sites.values():
        lines.append(
            f"| {record.name} | {record.threshold:.4g} | {record.images} | {record.melanomas} "
            f"| {record.sample_sensitivity:.3f} | {record.sample_specificity:.3f} "
            f"| {record.global_sensitivity:.3f} | {record.global_specificity:.3f} "
            f"| {yes_no(record.head_adopted)} | {auc_text(record.model_auc)} "
            f"| {auc_text(record.head_auc)} | {record.calibrated_at} |"
        )
    return "\n".join(lines)


def yes_no(adopted: bool) -> str:
    return "yes" if adopted else "no"


def auc_text(auc: float | None) -> str:
    return "-" if auc is None else f"{auc:.3f}"


def refresh_card_sites(client: MlflowClient, model_name: str, version: str) -> None:
    """Make the version's description (its model card) end with its current sites."""
    current = client.get_model_version(model_name, version)
    card = (current.description or "").split("\n" + SITES_HEADING + "\n")[0].rstrip()
    sites = sites_of_tags(current.tags)
    if sites:
        card += "\n\n" + sites_section(sites)
    if card != (current.description or ""):
        client.update_model_version(model_name, version, description=card)
