"""Classifier registry, the training loop, stacked (vmap) training and losses."""
