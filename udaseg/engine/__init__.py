"""udaseg.engine."""
