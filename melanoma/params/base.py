"""What every section model of `params.yaml` shares."""

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    # A typo in params.yaml must fail loudly, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)
