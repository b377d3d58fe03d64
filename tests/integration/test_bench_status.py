"""benchmarks/common.py's ConvergeStatus, which times kill -9 -> Ready in status: its first
read inside a timed window must cost what every later read costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import CLI
from tests.helpers import daemon, write

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

# In a fresh interpreter, as the benchmark runs: is the object validator built once the
# reader exists (before the first timed read), and does the reader read the stored object?
COLD_READER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from common import ConvergeStatus
from converge.api import ManagedService
status = ConvergeStatus(Path(sys.argv[2]))
built = ManagedService.__pydantic_complete__
print(built, status.ready_again("cold", -1), ManagedService.__pydantic_complete__)
"""


def test_the_status_reader_builds_the_object_validator_before_the_first_timed_read(cli: CLI, tmp_path: Path) -> None:
    """converge's models build their validators on first use (defer_build): built in the
    first ready_again, that cost (~60 ms) landed in the first kill's kill -> Ready sample
    of every bench_supervise run (120-137 ms against ~55 ms for the others)."""
    write(tmp_path / "s.yaml", daemon("cold", ["sleep", "600"], check=None))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    out = subprocess.run([sys.executable, "-c", COLD_READER, str(BENCH), str(cli.store)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True"]  # built before; read (not Ready: never started)
