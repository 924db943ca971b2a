"""mtrank: a TFX pipeline for multi-task recommendation ranking.

Installed code imports as `mtrank.<package>`; the packages stay at the top of
the repository, one folder each, mapped here.
"""
from setuptools import setup

PACKAGES = ("base", "cli", "simulator", "pipeline", "components", "trainer", "serving",
            "reporting", "kubeflow")

setup(
    name="mtrank",
    version="0.1.0",
    description="End-to-end TFX pipeline for multi-task recommendation ranking",
    python_requires=">=3.10,<3.11",
    packages=[f"mtrank.{name}" for name in PACKAGES],
    package_dir={f"mtrank.{name}": name for name in PACKAGES},
    package_data={"mtrank.pipeline": ["configs/*.yaml", "schemas/*.pbtxt"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-transform==1.16.0",
        "tensorflow-model-analysis==0.47.1",
        "tensorflow-data-validation==1.16.1",
        "tensorflow-serving-api==2.16.1",
        "ml-metadata==1.16.0",
        "kfp==2.5.0",
        "apache-beam[gcp]",
        "dill",
        "pydantic>=2,<3",  # the config model (base/config.py)
        "pyyaml",
        "grpcio-health-checking",
        "aiohttp",  # TF Serving's REST API (serving/rest.py)
        "psutil",
        "matplotlib",  # plots of `mtrank report`
    ],
    extras_require={"test": ["pytest", "import-linter", "jsonschema"]},
    entry_points={"console_scripts": ["mtrank=mtrank.cli.main:main"]},
)
