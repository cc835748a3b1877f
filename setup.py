"""Packaging for hos_keras."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="hos_keras",
    version="0.1.0",
    description=(
        "Structured pruning of Keras 3 models with higher-order statistics and "
        "auxiliary reconstruction losses (Chatzikonstantinou et al., CVPRW 2020)."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["hos_keras", "hos_keras.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.3",
        "numpy>=1.26",
        "scipy>=1.11",
        "tensorflow-datasets>=4.9",
        "keras-tuner[bayesian]>=1.4",  # the extra brings scikit-learn for BayesianOptimization
        "tensorboard>=2.16",
        # tensorflow-datasets imports it to prepare any dataset but does not
        # declare it (download_and_prepare fails with ModuleNotFoundError).
        "importlib_resources>=6",
        # The demo's PNG plot of per-layer ratios and statistics.
        "matplotlib>=3.8",
    ],
    entry_points={"console_scripts": ["hos-keras = hos_keras.cli:main"]},
    extras_require={
        # keras-hub: real CNN backbones (random weights) for the coverage tests;
        # hypothesis: the property tests over random architectures;
        # tensorly: an independent HOOI to test hos_keras.decompose against;
        # mkdocs, mkdocs-material, mkdocstrings[python], latex2mathml:
        # tests/test_docs.py builds the docs site (mkdocs.yml) with warnings as
        # errors - mkdocs >= 1.6 for its link and anchor validation,
        # mkdocs-material for the theme, mkdocstrings and its Python handler for
        # the API pages made from the docstrings, latex2mathml for the formulas
        # (docs/hooks/mathml.py turns their TeX into MathML, so the site needs no
        # script from elsewhere); bounds: the versions tested.
        "test": [
            "pytest>=8",
            "ruff>=0.5",
            "keras-hub>=0.32",
            "hypothesis>=6.100",
            "tensorly>=0.9",
            "mkdocs>=1.6.1",
            "mkdocs-material>=9.8.2",
            "mkdocstrings[python]>=1.0.8",
            "mkdocstrings-python>=2.0.11",
            "latex2mathml>=3.81",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Keras",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
