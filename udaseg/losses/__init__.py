"""udaseg.losses."""
