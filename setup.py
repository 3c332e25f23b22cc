"""Packaging beyond what pyproject.toml can say: the KFP pipeline (``pipelines/``) and its
components (``components/``) live at the top of the repository, where a reader looks for them,
and ship inside the wheel as ``t2iops/_project/{pipelines,components}``, so that
``pip install t2iops`` then ``t2iops pipeline compile`` works without a checkout. The compiler
imports them the same way from either place (see ``find_project_root``)."""
from setuptools import find_packages, setup

BUNDLED = {"t2iops._project.components": "components", "t2iops._project.pipelines": "pipelines"}

setup(
    packages=find_packages("src") + list(BUNDLED),
    package_dir={"": "src", **BUNDLED},
    package_data={
        "t2iops": ["py.typed", "presets/*.yaml", "export/*.txt"],
        "t2iops._project.pipelines": ["settings.yaml"],
    },
)
