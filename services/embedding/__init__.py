"""The embedding service: sentence vectors from a local transformers model, batched and cached."""
