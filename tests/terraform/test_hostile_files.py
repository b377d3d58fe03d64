"""Terraform files are private (run logs, copied variable files, state) and variableFiles
work with a relative store path (the default `.converge`), through the real CLI."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import CLI

from .conftest import RECIPES

pytestmark = pytest.mark.terraform


def test_relative_store_variable_files_and_private_modes(cli: CLI, tmp_path: Path, terraform_bin: str) -> None:
    work = tmp_path / "work"
    shutil.copytree(RECIPES / "file", work / "recipe")
    world = tmp_path / "world"
    world.mkdir()
    vars_file = work / "prod.tfvars"
    vars_file.write_text(f'dir = "{world}"\ncontent = "from-the-var-file"\n')
    vars_file.chmod(0o644)
    (work / "svc.yaml").write_text(
        "apiVersion: converge.dev/v1alpha1\nkind: ManagedService\nmetadata: {name: tf}\nspec:\n"
        "  backend:\n    terraform:\n      directory: ./recipe\n      variableFiles: [prod.tfvars]\n"
    )
    cli.env["CONVERGE_STORE"] = ".converge"  # relative, as by default
    cli.cwd = work
    cli("apply", "-f", "svc.yaml")
    r = cli("reconcile", "--timeout", "120s", check=False)
    assert r.returncode == 0, r.stderr
    assert (world / "made.txt").read_text() == "from-the-var-file"
    rt = work / ".converge" / "_runtime" / "default" / "tf"
    loose = []
    for dirpath, _dirnames, filenames in os.walk(rt):
        if ".terraform" in dirpath:
            continue
        for n in filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                continue
            is_private = stat.S_IMODE(p.stat().st_mode) & 0o077 == 0
            if (n.endswith((".log", ".tfvars", ".tfstate", ".tfstate.backup")) or "varfiles" in dirpath) \
                    and not is_private:
                loose.append(f"{p.relative_to(rt)} {oct(p.stat().st_mode)}")
    assert not loose, loose
    assert any(rt.rglob("*.log")) and any(rt.rglob("terraform.tfstate")) and any(rt.rglob("00-prod.tfvars"))
    cli("delete", "tf", "--timeout", "120s")
