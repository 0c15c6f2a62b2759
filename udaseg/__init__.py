"""udaseg: unsupervised domain adaptation for semantic segmentation."""

__version__ = "0.1.0"
