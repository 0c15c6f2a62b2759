"""UDA methods; importing this registers them in METHODS."""
