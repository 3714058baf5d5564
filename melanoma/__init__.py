"""Shared logic of the melanoma-detection pipeline; the DVC stages in `stages/` are thin wrappers."""
