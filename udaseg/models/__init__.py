"""Segmentors, backbones, discriminators and weight loading; importing registers MODELS."""
