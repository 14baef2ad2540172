"""Downstream evaluation of pretrained encoders (frozen-encoder linear probing)."""
