"""The package installs as a napari plugin: manifest discovered, files shipped."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import npe2
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_manifest_entry_point_is_discovered():
    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-recist-seg"]
    assert len(eps) == 1, "napari.manifest entry point not registered (pip install -e . ?)"
    manifest = npe2.PluginManifest.from_distribution("napari-recist-seg")
    assert manifest.name == "napari-recist-seg"
    pm = npe2.PluginManager()
    pm.discover()
    assert "napari-recist-seg" in pm._manifests
    widget_names = {w.display_name for w in manifest.contributions.widgets}
    assert {"RECIST annotator", "Bulk segment", "Train / fine-tune", "Evaluate"} <= widget_names


def test_every_manifest_command_imports():
    manifest = npe2.PluginManifest.from_distribution("napari-recist-seg")
    for cmd in manifest.contributions.commands:
        module_name, attr = cmd.python_name.split(":")
        module = importlib.import_module(module_name)
        assert hasattr(module, attr), f"{cmd.id}: {cmd.python_name} does not exist"


def test_core_does_not_import_qt_or_napari():
    code = (
        "import sys\n"
        "import napari_recist_seg.recist, napari_recist_seg.targets, napari_recist_seg.metrics\n"
        "import napari_recist_seg.cli, napari_recist_seg.jobs.common, napari_recist_seg.jobs.targets\n"
        "import napari_recist_seg.jobs.segment, napari_recist_seg.jobs.evaluate, napari_recist_seg.jobs.train\n"
        "import napari_recist_seg.predict, napari_recist_seg.training, napari_recist_seg.model\n"
        "import napari_recist_seg.clusters, napari_recist_seg.preprocess, napari_recist_seg.data\n"
        "import napari_recist_seg.runtime\n"
        "import napari_recist_seg.annotation, napari_recist_seg.curation\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_wheel_ships_manifest_model_and_samples(tmp_path):
    """A plain ``pip install .`` (a wheel) must carry the manifest, entry point and data."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed: {result.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("napari_recist_seg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        ep_file = next(n for n in names if n.endswith("entry_points.txt"))
        ep_text = zf.read(ep_file).decode()
    assert "napari_recist_seg/napari.yaml" in names
    assert "[napari.manifest]" in ep_text and "napari_recist_seg:napari.yaml" in ep_text
    assert "recist-seg = napari_recist_seg.cli:main" in ep_text
    assert any(n.startswith("napari_recist_seg/models/default/") for n in names), "default model not shipped"
    assert any(n.startswith("napari_recist_seg/sample_data/") for n in names), "sample data not shipped"


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "napari_recist_seg", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("targets", "train", "segment", "evaluate", "view"):
        assert command in out.stdout
