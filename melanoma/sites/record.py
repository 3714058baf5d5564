"""What `melanoma site calibrate` finds for one site of one registry version: the record
melanoma.registry.sites stores with the version (as a tag, in JSON)."""

from pydantic import BaseModel, ConfigDict


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
    # The site head's gate (None: calibrated before there were heads). When adopted, the
    # threshold is on the head's P(melanoma), the sample figures on its out-of-fold scores.
    head_adopted: bool = False
    head_reason: str | None = None
    model_auc: float | None = None  # the model's melanoma AUC on the sample
    head_auc: float | None = None  # the head's out-of-fold AUC on it
    head_sha256: str | None = None  # of the stored head, when adopted
