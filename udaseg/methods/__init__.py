"""UDA methods; importing this registers them in METHODS."""

from udaseg.methods import source_only  # noqa: F401
