"""Package discovery for setuptools; everything else is in pyproject.toml.

Only this needs code: the packages are found (``mcdrop*``, ``service*``, so a new
sub-package is never left out of the wheel), and the repository's ``models/`` folder is
added as the data package ``mcdrop.default_models``, so that the default models ship in
the wheel while the repository keeps its layout.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mcdrop*", "service*"]), "mcdrop.default_models"],
    package_dir={"mcdrop.default_models": "models"},
)
