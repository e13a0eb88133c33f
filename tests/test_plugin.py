"""A decoder from another installed distribution: a real package with its own entry point.

The package (tests/fixtures/plugin/) is built and installed with pip into a folder of its own,
which is then put on the path; `importlib.metadata` finds its entry point there exactly as it
would in site-packages. Afterwards the folder leaves the path and the decoder is gone. It is
written against the one interface module, `lanmt_cli.decoding`.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lanmt_cli import registry
from lanmt_cli.app import app

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).parent / "fixtures" / "plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The plugin package installed (by pip, from its own pyproject.toml) into a folder."""
    work = tmp_path_factory.mktemp("plugin")
    shutil.copytree(PLUGIN, work / "src")
    site = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--target", str(site), str(work / "src")],
        check=True, capture_output=True, env={**os.environ, "PIP_NO_WARN_SCRIPT_LOCATION": "1"},
    )  # fmt: skip
    assert list(site.glob("lanmt_greedy_plugin-0.3.0.dist-info/entry_points.txt"))
    return site


@pytest.fixture
def installed(plugin_site, monkeypatch) -> Path:
    """The plugin's folder on sys.path for this test only."""
    monkeypatch.syspath_prepend(str(plugin_site))
    yield plugin_site
    sys.modules.pop("lanmt_greedy_plugin", None)


def test_plugin_is_listed_by_a_fresh_process(plugin_site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-m", "lanmt_cli.app", "decoders", "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    greedy = rows["greedy"]
    assert (greedy["package"], greedy["version"]) == ("lanmt-greedy-plugin", "0.3.0")
    assert greedy["entry_point"] == "lanmt_greedy_plugin:Greedy"
    assert [o["name"] for o in greedy["options"]] == ["max_len_b"]
    assert rows["refine"]["package"] == "lanmt"  # built-ins take the same path


def test_plugin_needs_only_the_decoding_interface(plugin_site):
    """The plugin imports one lanmt module, which brings no built-in decoder along."""
    tree = ast.parse((PLUGIN / "lanmt_greedy_plugin.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in modules if m.startswith("lanmt_cli")} == {"lanmt_cli.decoding"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT)])}
    code = "import sys, lanmt_greedy_plugin; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "lanmt_cli.decoding" in loaded
    assert not [m for m in loaded if m.startswith(("lanmt_cli.decoders", "lanmt_cli.registry"))]


def test_plugin_decoder_translates(installed, tiny_bundle, tiny_task):
    runner = CliRunner()
    listing = runner.invoke(app, ["decoders"])
    assert "greedy  (package lanmt-greedy-plugin 0.3.0" in listing.stdout
    text = "".join(f"{s}\n" for s, _ in tiny_task[:20])
    result = runner.invoke(app, ["translate", "-m", str(tiny_bundle), "-d", "greedy"], input=text)
    assert result.exit_code == 0, result.output
    out = result.stdout.split("\n")[:-1]
    assert sum(o == ref for o, (_, ref) in zip(out, tiny_task, strict=False)) >= 15
    bad = runner.invoke(app, ["translate", "-m", str(tiny_bundle), "-d", "greedy",
                              "--opt", "max_len_b=-1"], input=text)  # fmt: skip
    assert bad.exit_code == 1 and "max_len_b of decoder greedy must be at least 0" in bad.stderr


def test_plugin_is_gone_once_uninstalled(plugin_site):
    assert str(plugin_site) not in sys.path
    assert "greedy" not in registry.registrations()


def _dist_info(site: Path, name: str, entry_points: str) -> None:
    """A bare installed distribution: metadata and entry points, as installers write them."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[lanmt.decoders]\n{entry_points}\n")


def test_broken_and_clashing_plugins_give_clear_errors(tmp_path, monkeypatch, tiny_bundle):
    _dist_info(tmp_path, "broken-plugin", "broken = no_such_module:Decoder")
    _dist_info(tmp_path, "clashing-plugin", "refine = lanmt_cli.decoders.one_shot:OneShot")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = {(r["name"], r["package"]): r for r in registry.describe()}
    assert "No module named 'no_such_module'" in rows["broken", "broken-plugin"]["error"]
    assert rows["refine", "clashing-plugin"]["error"] == "registered by more than one package"
    assert rows["one-shot", "lanmt"]["error"] is None  # the others still work
    runner = CliRunner()
    for name, message in [
        ("broken", "decoder broken from package broken-plugin failed to load"),
        ("refine1", "decoder refine is registered by more than one package"),
    ]:
        result = runner.invoke(app, ["translate", "-m", str(tiny_bundle), "-d", name], input="x\n")
        assert result.exit_code == 1 and message in result.stderr, result.output
    assert runner.invoke(app, ["decoders"]).exit_code == 0
