"""Finding (or, when asked, building) the real assets for the ``real`` tests.

The assets are built by ``make real-assets`` (``make test`` does it first
when pip and apt can run); the tests never fetch anything themselves unless
``SPEECHBRAIN_MOE_BUILD_REAL_ASSETS=1`` asks the fixture to run the build.
"""

import os

import pytest

from tools.real_assets.layout import ENV_VAR, RealAssets

BUILD_VAR = "SPEECHBRAIN_MOE_BUILD_REAL_ASSETS"


def real_assets_or_skip(steps):
    """The asset folder with ``steps`` built, else ``pytest.skip`` (why, how)."""
    assets = RealAssets()
    missing = [step for step in steps if not assets.is_built(step)]
    if missing and os.environ.get(BUILD_VAR) == "1":
        from tools.real_assets.build import build_all

        build_all(assets.root, steps=missing)
        missing = [step for step in steps if not assets.is_built(step)]
    if missing:
        pytest.skip(
            f"real assets {missing} are not built in {assets.root}: run `make "
            "real-assets` (python -m tools.real_assets; needs pip, apt-get, "
            f"espeak-ng and sox), set {ENV_VAR} to another asset folder, or "
            f"{BUILD_VAR}=1 to build them from the tests."
        )
    return assets
