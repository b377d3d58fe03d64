"""The typed Python client, as pipeline code uses it (ZenML's model-deployer needs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from converge.api import ManagedService
from converge.client import Client, WaitTimeout
from tests.conftest import _kill_leftovers
from tests.helpers import gone, http_service


def test_deploy_find_replace_stop_start_delete(tmp_path: Path) -> None:
    c = Client.local(tmp_path / "store")
    try:
        model = ManagedService.model_validate(http_service("iris", labels={"model": "iris", "stack": "ml"}))
        assert [r.action for r in c.apply([model])] == ["created"]
        c.reconcile(timeout=30)
        svc = c.wait("iris", timeout=10)
        assert svc.status.endpoint is not None and svc.status.endpoint.uri
        assert [s.metadata.name for s in c.list(selector="model=iris")] == ["iris"]
        assert c.list(selector="model=other") == []
        pid = svc.status.backend["pid"]
        port = svc.status.endpoint.port

        # deploy-with-replace: same name, new spec -> updated in place, never a second copy
        v2 = ManagedService.model_validate(http_service("iris", port, labels={"model": "iris", "stack": "ml"},
                                                        env={"GREETING": "v2"}))
        assert [r.action for r in c.apply([v2])] == ["configured"]
        c.reconcile(timeout=30)
        svc = c.wait("iris", timeout=10)
        assert svc.status.backend["pid"] != pid and len(c.list()) == 1
        assert svc.status.endpoint is not None and svc.status.endpoint.port == port

        c.down(names=["iris"])
        assert c.get("iris").status.state.value == "scaled_to_zero"
        with pytest.raises(WaitTimeout):
            c.wait("iris", timeout=0.2)
        c.up(selector="stack=ml")
        assert c.wait("iris", timeout=10).status.state.value == "active"
        assert any("listening" in line for line in c.logs("iris", tail=5))

        pid = c.get("iris").status.backend["pid"]
        assert c.delete("iris").gone
        assert c.list() == []
        assert gone(pid)
    finally:
        c.down(selector="", force=True)
        _kill_leftovers(tmp_path / "store")
