"""The package layers of .importlinter hold: no package imports one above it
(cli, simulator, kubeflow, pipeline, reporting, components, trainer, serving,
base, top to bottom). Unit tests beside the modules count as their package;
tests that need packages of several layers live in tests/."""
import configparser
import os
import subprocess
import sys

import grimp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT = os.path.join(REPO, ".importlinter")
LAYERS_SECTION = "importlinter:contract:layers"
# The console script installed beside this interpreter by import-linter.
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint_imports(config_path: str, cwd: str) -> subprocess.CompletedProcess:
    """lint-imports on a config, its report in stdout. Run from a scratch
    directory (lint-imports puts its working directory on the import path,
    and the repository's top-level folders must not shadow anything), and
    without a cache, so it reads the modules as they are now."""
    return subprocess.run([LINT_IMPORTS, "--config", config_path, "--no-cache", "--no-logo"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def _layers(config: configparser.ConfigParser) -> list:
    return config[LAYERS_SECTION]["layers"].split()


def test_the_import_graph_holds_the_product_modules():
    """A graph without modules would keep any contract: the editable
    install's `mtrank` namespace package must resolve to the folders."""
    config = configparser.ConfigParser()
    config.read(CONTRACT)
    graph = grimp.build_graph(*_layers(config), cache_dir=None)
    assert {"mtrank.base.config", "mtrank.cli.main", "mtrank.trainer.task",
            "mtrank.serving.signatures", "mtrank.components.ingest"} <= graph.modules
    assert graph.direct_import_exists(importer="mtrank.cli.main", imported="mtrank.base.config")


def test_no_package_imports_one_above_it(tmp_path):
    result = _lint_imports(CONTRACT, str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout, result.stdout


def test_the_linter_reports_a_package_importing_one_above_it(tmp_path):
    """The repository's contract with its layers upside down: cli, now at the
    bottom, imports base, now at the top, and the linter must say so."""
    config = configparser.ConfigParser()
    config.read(CONTRACT)
    layers = _layers(config)
    assert layers[0] == "mtrank.cli" and layers[-1] == "mtrank.base"
    config[LAYERS_SECTION]["layers"] = "\n" + "\n".join(reversed(layers))
    upside_down = tmp_path / "upside_down.ini"
    with open(upside_down, "w") as f:
        config.write(f)
    result = _lint_imports(str(upside_down), str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout, result.stdout
    assert "mtrank.cli is not allowed to import mtrank.base" in result.stdout, result.stdout
    assert "mtrank.cli.main -> mtrank.base.config" in result.stdout, result.stdout
