"""Test-side access to the synthetic datasets (they live in the package for ``embedstore demo``)."""

from embedstore.extract.synthetic import *  # noqa: F401,F403
from embedstore.extract.synthetic import __all__  # noqa: F401
