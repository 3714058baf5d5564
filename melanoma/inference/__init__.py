"""Asking a trained model about images: test-time views, the unfamiliar-image score, batched
predictions of files."""
