"""`converge run --metrics-port`: the operator's Prometheus metrics in local mode."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import CLI
from tests.helpers import PY, daemon, free_port, until, write


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return ""


def test_run_serves_metrics(cli: CLI, tmp_path: Path) -> None:
    cli("apply", "-f", str(write(tmp_path / "s.yaml", daemon("a", [PY, "-c", "import time; time.sleep(600)"],
                                                                check=None))))
    port = free_port()
    run = cli.popen("run", "--metrics-port", str(port))
    try:
        until(lambda: 'converge_services{state="active"} 1.0' in _metrics(port), timeout=30, what="metrics")
        text = _metrics(port)
        assert 'converge_reconcile_total{result="settled"}' in text
        assert "converge_reconcile_duration_seconds_count" in text
        assert "converge_workqueue_depth" in text and "converge_restarts_total" in text
        pid = int(cli.obj("a")["status"]["backend"]["pid"])
        subprocess.run(["kill", "-9", str(pid)], check=True)
        until(lambda: "converge_restarts_total 1.0" in _metrics(port), timeout=30, what="restart counted")
    finally:
        run.terminate()
        run.wait(30)
    time.sleep(0.2)
