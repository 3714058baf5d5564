"""Shared logic of the melanoma pipeline; the DVC stages in `stages/` are thin wrappers."""
