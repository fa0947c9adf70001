"""Packaging a user meets first: licence files, --version, CLI help, declared deps."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib

from napari_recist_seg.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Import name -> distribution name, where they differ.
DIST_OF = {"cv2": "opencv-python-headless", "PIL": "Pillow", "sklearn": "scikit-learn",
           "segmentation_models_pytorch": "segmentation-models-pytorch",
           "huggingface_hub": "huggingface-hub", "yaml": "PyYAML"}
# Imported only inside a guarded optional path (GPU kernels probe) or the napari layer.
OPTIONAL = {"triton", "napari"}


def _dist_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_license_files_exist_and_are_declared():
    assert "BSD 3-Clause" in (REPO / "LICENSE").read_text()
    assert "CC BY-NC-SA 4.0" in (REPO / "DATA_LICENSES.md").read_text()
    assert PYPROJECT["project"]["license"] == "BSD-3-Clause"
    assert set(PYPROJECT["project"]["license-files"]) == {"LICENSE", "DATA_LICENSES.md"}


def test_version_flag_prints_the_installed_version():
    out = subprocess.run([sys.executable, "-m", "napari_recist_seg", "--version"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    assert out.stdout.split() == ["recist-seg", version("napari-recist-seg")]


def test_version_is_looked_up_only_for_the_version_flag(monkeypatch, capsys):
    # Looking the version up scans the installed distributions (~30 ms): every command's
    # start (a bulk run's too) paid it when the parser was built.
    from napari_recist_seg import cli

    asked = []
    monkeypatch.setattr(cli, "version", lambda name: asked.append(name) or "9.9")
    parser = cli.build_parser()
    parser.parse_args(["segment", "DS", "--out", "OUT"])
    assert asked == []
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--version"])
    assert stop.value.code == 0 and asked == ["napari-recist-seg"]
    assert capsys.readouterr().out.split() == ["recist-seg", "9.9"]


def test_every_cli_option_has_help_and_help_lists_exit_codes():
    parser = build_parser()
    missing = []

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    assert "130" in sub.format_help(), sub_name
                    walk(sub, sub_name)
            elif not action.help:
                missing.append(f"{name} {action.dest}")

    walk(parser, "recist-seg")
    assert not missing, missing
    text = parser.format_help()
    for code in ("0", "2", "3", "130"):
        assert re.search(rf"^\s+{code}\s+\w", text, re.M), code


def test_declared_dependencies_are_the_imported_ones():
    imported = set()
    for path in (REPO / "napari_recist_seg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported - set(sys.stdlib_module_names)
                   if m not in ("napari_recist_seg", "__future__")} - OPTIONAL
    declared = _dist_names(PYPROJECT["project"]["dependencies"])
    needed = {DIST_OF.get(m, m).lower().replace("_", "-") for m in third_party}
    assert needed <= declared, needed - declared
    # Nothing declared that the package never imports.
    assert declared <= needed, declared - needed
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"napari", "pyqt6"} <= _dist_names(extras["all"])
    assert "pyqt5" in _dist_names(extras["pyqt5"])


def test_readme_has_the_pip_install_line():
    assert 'pip install "napari-recist-seg[all]"' in (REPO / "README.md").read_text()


def test_the_code_passes_the_configured_lint():
    """``ruff check`` (pyproject's rule set, as the pre-commit hook runs it) finds
    nothing in the package, tests, benchmarks, scripts and docs."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
