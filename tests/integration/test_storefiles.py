"""The file store's objects read without the API models (converge.storefiles): a file
converge wrote and validated is stamped and trusted as it is; every other file (edited
in place, copied, hand-written YAML, not stamped) is validated, so `converge get`
shows the same either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from converge import storefiles
from converge.api import ManagedService, ServiceKey
from converge.filestore import FileStore
from converge.store import CorruptObject
from tests.conftest import CLI

KEY = ServiceKey("default", "good")


def make(name: str) -> ManagedService:
    return ManagedService.model_validate({
        "metadata": {"name": name, "labels": {"tier": "web"}},
        "spec": {"backend": {"daemon": {"command": ["true"], "stopGracePeriodSeconds": 3}},
                 "endpoint": {"port": 18080}},
    })


def stamped(path: Path) -> bool:
    try:
        return bool(os.getxattr(path, storefiles.STAMP_ATTR))
    except OSError:
        return False


@pytest.fixture
def fstore(tmp_path: Path) -> FileStore:
    s = FileStore(tmp_path / "st")
    s.create(make("good"))
    if not stamped(s.path(KEY)):
        pytest.skip("this file system has no user extended attributes")
    return s


def test_written_objects_are_stamped_and_read_as_their_dump(fstore: FileStore) -> None:
    doc = storefiles.document(KEY, str(fstore.path(KEY)))
    assert doc == fstore.get(KEY).dump() == json.loads(fstore.path(KEY).read_text())
    docs, errors = storefiles.documents(fstore.root, None)
    assert docs == [doc] and errors == []


def test_an_edit_in_place_keeps_the_attribute_but_not_the_trust(fstore: FileStore) -> None:
    path = fstore.path(KEY)
    text = path.read_text().replace('"adminState": "active"', '"adminState": "sleeping"')
    with path.open("r+") as f:  # same inode: the stamp stays, the bytes change
        f.write(text)
    assert stamped(path)
    with pytest.raises(CorruptObject, match=r"spec\.adminState"):
        storefiles.document(KEY, str(path))
    docs, errors = storefiles.documents(fstore.root, "default")
    assert docs == [] and "spec.adminState" in str(errors[0])


def test_a_stamped_copy_under_another_name_is_refused(fstore: FileStore) -> None:
    subprocess.run(["cp", "--preserve=xattr", str(fstore.path(KEY)), str(fstore.root / "default" / "copy.yaml")],
                   check=True)
    assert stamped(fstore.root / "default" / "copy.yaml")
    with pytest.raises(CorruptObject, match="holds default/good, expected default/copy"):
        storefiles.document(ServiceKey("default", "copy"), str(fstore.root / "default" / "copy.yaml"))


def test_hand_edited_yaml_is_validated_and_shown_as_the_model_dumps_it(fstore: FileStore) -> None:
    path = fstore.path(KEY)
    edited = yaml.safe_load(path.read_text())
    edited["spec"]["backend"]["daemon"]["stopGracePeriodSeconds"] = 5  # an int where the model has a float
    path.write_text(yaml.safe_dump(edited))
    doc = storefiles.document(KEY, str(path))
    assert doc["spec"]["backend"]["daemon"]["stopGracePeriodSeconds"] == 5.0
    assert isinstance(doc["spec"]["backend"]["daemon"]["stopGracePeriodSeconds"], float)
    assert doc == FileStore(fstore.root).get(KEY).dump()
    assert not storefiles.read(KEY, str(path)).stamped  # valid, not canonical: validated on every read


def test_a_valid_canonical_file_without_a_stamp_is_stamped_by_the_first_validating_read(fstore: FileStore) -> None:
    path = fstore.path(KEY)
    os.removexattr(path, storefiles.STAMP_ATTR)  # e.g. written by an older converge
    before = os.stat(path)
    assert storefiles.document(KEY, str(path)) == fstore.get(KEY).dump()
    assert stamped(path)
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)


def test_get_imports_no_pydantic_and_still_names_a_bad_file(cli: CLI, tmp_path: Path) -> None:
    FileStore(cli.store).create(make("good"))
    if not stamped(cli.store / "default" / "good.yaml"):
        pytest.skip("this file system has no user extended attributes")
    probe = ("import atexit, sys; atexit.register(lambda: print('pydantic' in sys.modules, file=sys.stderr)); "
             "from converge.cli import main; main()")

    def get(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", probe, "get", *args], capture_output=True, text=True,
                              env=cli.env, cwd=tmp_path, timeout=60, check=False)

    for args in [(), ("-o", "wide"), ("good", "-o", "json"), ("-o", "name")]:
        p = get(*args)
        assert p.returncode == 0 and "good" in p.stdout and p.stderr.strip() == "False", (args, p.stderr)
    assert json.loads(get("good", "-o", "json").stdout) == json.loads(cli("get", "good", "-o", "json").stdout)
    path = cli.store / "default" / "good.yaml"
    with path.open("r+") as f:
        f.write(path.read_text().replace('"port": 18080', '"port": 99999'))
    p = get()
    assert "good.yaml: spec.endpoint.port" in p.stderr and "good" not in p.stdout
