"""Datasets, label spaces, transforms and loaders."""
