"""The sections of `params.yaml` for the clinics the model serves: the unfamiliar-image
warning (`unfamiliar`) and each site's own alert threshold and drift check (`sites`)."""

from typing import Literal

from pydantic import Field

from melanoma.params.base import _Section


class UnfamiliarParams(_Section):
    """The unfamiliar-image warning (melanoma.inference.unfamiliar), fitted by `train`."""

    depth: str = Field(
        "pooled",
        min_length=1,
        description="where the score looks in efficientnet_lite0/1/2: `pooled` (the "
        "classifier's features) or a layer of the architecture's backbone such as block14_add; "
        "other architectures: pooled",
    )
    neighbours: int = Field(10, ge=1, description="k of the distance to the k-th nearest")
    fit_images: int = Field(2000, ge=50, description="training images the score compares with")
    validation_flagged: float = Field(
        0.002, gt=0, lt=0.5, description="share of the validation split above the threshold"
    )


class SiteParams(_Section):
    """A clinic's own alert threshold (`melanoma site calibrate`, melanoma.sites)."""

    rule: Literal["order_statistic", "logit_normal"] = "order_statistic"
    target_sensitivity: float = Field(
        0.80, gt=0.5, lt=1, description="promised on the site's images beyond its sample"
    )
    confidence: float = Field(
        0.90, gt=0.5, lt=1, description="how often the promise holds over samples"
    )
    drift_alpha: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="`site check`: a batch like validation is flagged this often",
    )
    drift_permutations: int = Field(500, ge=50, description="of the embedding test's p-value")
    # The site head (melanoma.sites.head): a correction of the ranking fitted on the sample.
    adapt: Literal["auto", "off"] = Field(
        "auto", description="auto: fit the site head and adopt it where the gate says so"
    )
    adapt_margin: float = Field(
        0.02,
        ge=0,
        lt=0.5,
        description="the head's out-of-fold AUC must beat the model's AUC on the sample by this",
    )
    head_dimensions: int = Field(
        8, ge=1, le=256, description="principal components of the features the head takes"
    )
    head_c: float = Field(
        0.1, gt=0, description="inverse regularisation strength of the head's regression"
    )
    head_folds: int = Field(
        5, ge=2, le=20, description="folds of the out-of-fold scores (stratified)"
    )
    seed: int = Field(42, description="of the folds")
