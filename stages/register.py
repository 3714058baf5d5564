"""Stage `register`: log evaluate's outputs to the model's MLflow run, give the model its registry
version (the same one on every re-run) and decide whether it becomes `champion`.

Promotion re-scores the champion on evaluate's images; it moves the alias only if the new model is
better beyond noise (melanoma.registry.promotion)."""

import logging

from melanoma.config import load_params
from melanoma.logs import exit_on, setup_logging
from melanoma.paths import REGISTRATION_FILE
from melanoma.registry.registration import register_evaluated_model, write_registration
from melanoma.tracking import git_commit, runs_end_as_killed

log = logging.getLogger("stages.register")


@exit_on()
def main() -> None:
    setup_logging()
    params = load_params()
    # Before any output is rewritten: a rewritten tracked report must not make the tree "dirty".
    commit = git_commit()
    with runs_end_as_killed():
        registration = register_evaluated_model(params, commit)
    write_registration(registration, REGISTRATION_FILE)
    log.info(
        "%s v%s %s; %s",
        registration.model_name,
        registration.version,
        registration.decision,
        REGISTRATION_FILE,
    )


if __name__ == "__main__":
    main()
