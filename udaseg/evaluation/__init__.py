"""udaseg.evaluation."""
