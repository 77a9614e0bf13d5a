"""diffusers' own test modules, imported from a diffusers source checkout by path (never copied).

``EDITFORGE_DIFFUSERS_CHECKOUT`` names the checkout; without it (or when it lacks the module) the
calling test module is skipped with the reason. The installed diffusers stays the one under test.
"""

import importlib
import os
import sys
from pathlib import Path

import pytest

CHECKOUT_VARIABLE = "EDITFORGE_DIFFUSERS_CHECKOUT"


def import_diffusers_tests(module: str, runner: str):
    """The test module ``module`` (e.g. ``tests.pipelines.stable_diffusion_3.test_...``) of the
    checkout, or a module-level skip naming ``runner`` (the benchmark script that sets the variable)."""
    checkout = os.environ.get(CHECKOUT_VARIABLE)
    path = Path(*module.split(".")).with_suffix(".py")
    if not checkout:
        pytest.skip(f"diffusers' pipeline tests need a diffusers source checkout: set {CHECKOUT_VARIABLE}="
                    f"/path/to/diffusers (see {runner})", allow_module_level=True)
    if not (Path(checkout) / path).is_file():
        pytest.skip(f"{CHECKOUT_VARIABLE}={checkout} is not a diffusers checkout (no {path})", allow_module_level=True)
    import diffusers  # the installed one: it must not come from the checkout

    if Path(diffusers.__file__).resolve().is_relative_to(Path(checkout).resolve()):
        raise RuntimeError(f"diffusers was imported from the checkout ({diffusers.__file__}), not the installed package")
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    # The module object only: importing its classes into a test module would make pytest collect
    # diffusers' own (stock-pipeline) classes there too.
    return importlib.import_module(module)
