"""DVC stage `validate`: data/ingested/manifest.csv (+ the reference labels of
params.yaml `validate.reference_labels`) -> data/validated/manifest.csv,
reports/validation.json and GX Data Docs in reports/data_docs/.

Exits non-zero, before any work, when the reference file is missing or malformed; and after
writing everything when a critical expectation fails or a policy of `fail` meets a case.
"""

import logging
import sys

from melanoma.config import load_params
from melanoma.data.duplicates import resolve_content
from melanoma.data.manifest import INGEST_COLUMNS, VALIDATED_COLUMNS, read_manifest, write_manifest
from melanoma.data.reference_labels import load_reference_labels
from melanoma.data.validation import (
    build_report,
    run_expectations,
    summary_lines,
    too_few_warnings,
)
from melanoma.exit_codes import STAGE_STOPPED
from melanoma.logs import exit_on, setup_logging
from melanoma.paths import DATA_DOCS, INGESTED_MANIFEST, VALIDATED_MANIFEST
from melanoma.paths import VALIDATION_REPORT as REPORT

log = logging.getLogger("stages.validate")


@exit_on()
def main() -> None:
    setup_logging()
    policy = load_params().validate_
    reference = None
    if policy.reference_labels is not None:
        reference = load_reference_labels(policy.reference_labels, policy)
    manifest = read_manifest(INGESTED_MANIFEST, INGEST_COLUMNS)
    checks = resolve_content(manifest, policy, reference)
    expectations = run_expectations(checks.manifest, policy, DATA_DOCS)
    report = build_report(expectations, checks, policy, reference)
    write_manifest(checks.manifest, VALIDATED_MANIFEST, VALIDATED_COLUMNS)
    report.write(REPORT)
    for line in summary_lines(report):
        log.info("%s", line)
    for warning in too_few_warnings(report):
        log.warning("%s", warning)
    log.info("report: %s, data docs: %s", REPORT, DATA_DOCS / "index.html")
    if report.failures:
        for failure in report.failures:
            log.error("%s", failure)
        sys.exit(STAGE_STOPPED)


if __name__ == "__main__":
    main()
