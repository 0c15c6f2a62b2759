"""UDA methods; importing this registers every method module of the package in METHODS.

Each method is one module here; modules are discovered rather than listed, so adding a method
is adding a file. `base` (the contract) and `adversarial` (shared alignment steps) register
nothing.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
