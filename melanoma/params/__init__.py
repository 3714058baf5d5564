"""The sections of `params.yaml` as pydantic models, one module per concern.

`melanoma.config` composes them into `Params` and holds the checks that span sections.
"""
