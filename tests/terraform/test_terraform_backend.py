"""The Terraform backend against the real terraform CLI: apply, outputs, drift, variable
changes, destroy, failures, timeouts, a real background process, and a controller killed
mid-apply (recovered without losing state or duplicating resources)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from converge.backends import terraform_runner
from converge.backends.base import Phase
from converge.backends.errors import BackendUnavailable, PermanentError, TemporaryError
from converge.backends.terraform import TerraformBackend
from tests.helpers import free_port

from .conftest import MakeTarget, state_resources

pytestmark = pytest.mark.terraform

OUTPUTS = ["path", "greeting", "token", "missing"]


def _wait(cond: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _working_in(d: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if p.cwd() == str(d):
                out.append(p)
        except psutil.Error:
            continue
    return out


# --------------------------------------------------------------------------- apply, outputs


def test_apply_publishes_outputs_and_hides_sensitive(backend: TerraformBackend, make_target: MakeTarget,
                                                     world: Path, runtime: Path) -> None:
    secret = "s3cret-token-value"
    t = make_target("file", variables={"dir": str(world), "content": "one", "token": secret},
                    outputs=OUTPUTS, endpointOutput="path")
    assert backend.observe(t).phase == Phase.absent

    details = backend.provision(t)

    assert (world / "made.txt").read_text() == "one"
    assert details["outputs"] == {"path": str(world / "made.txt"), "greeting": "hello one",
                                  "token": "(sensitive)"}
    assert details["endpoint"] == str(world / "made.txt")
    assert details["runtimeDir"] == str(runtime)
    obs = backend.observe(t)
    assert (obs.phase, obs.drifted, obs.spec_hash) == (Phase.running, False, t.spec_hash)
    assert obs.details == details
    # the value is only in the tfvars file (0600) and the state, never in argv, status or logs
    assert oct((runtime / "converge.auto.tfvars.json").stat().st_mode & 0o777) == "0o600"
    logs = "\n".join(backend.logs(t))
    assert "apply" in logs and "Apply complete!" in logs
    assert secret not in logs and secret not in json.dumps(details)


def test_recipe_is_copied_and_recopied_on_spec_change(backend: TerraformBackend, make_target: MakeTarget,
                                                     recipe_copy: object, world: Path, runtime: Path) -> None:
    src = recipe_copy("file")  # type: ignore[operator]
    t = make_target(src, variables={"dir": str(world)}, outputs=["unlisted"])
    assert backend.provision(t)["outputs"] == {"unlisted": "not published"}

    tf = src / "main.tf"
    tf.write_text(tf.read_text().replace('"not published"', '"edited"'))
    # an edit of the source does not touch the running service ...
    obs = backend.observe(t)
    assert (obs.phase, obs.drifted) == (Phase.running, False)
    assert obs.details["outputs"] == {"unlisted": "not published"}
    # ... until the spec changes, which re-copies the recipe
    t2 = make_target(src, variables={"dir": str(world)}, outputs=["unlisted"], timeoutSeconds=300)
    assert backend.provision(t2)["outputs"] == {"unlisted": "edited"}
    assert (runtime / "main.tf").read_text() == tf.read_text()


def test_variable_files_are_copied_too(backend: TerraformBackend, make_target: MakeTarget, world: Path,
                                       tmp_path: Path, runtime: Path) -> None:
    varfile = tmp_path / "site.tfvars"
    varfile.write_text('content = "from a file"\n')
    t = make_target("file", variables={"dir": str(world)}, variableFiles=[str(varfile)], outputs=["greeting"])
    assert backend.provision(t)["outputs"] == {"greeting": "hello from a file"}
    varfile.write_text('content = "edited"\n')
    assert not backend.observe(t).drifted  # the running service uses its copy
    assert [p.name for p in (runtime / ".converge" / "varfiles").iterdir()] == ["00-site.tfvars"]


def test_without_copy_the_source_is_used_in_place(backend: TerraformBackend, make_target: MakeTarget,
                                                  recipe_copy: object, world: Path, runtime: Path) -> None:
    src = recipe_copy("file")  # type: ignore[operator]
    t = make_target(src, variables={"dir": str(world)}, outputs=["unlisted"], copy=False)
    backend.provision(t)
    assert (runtime / "main.tf").is_symlink()
    assert not (src / "terraform.tfstate").exists() and not (src / ".terraform").exists()

    tf = src / "main.tf"
    tf.write_text(tf.read_text().replace('"not published"', '"edited"'))
    obs = backend.observe(t)  # an edit of the source is a change to apply
    assert obs.drifted and obs.message == "outputs would change"
    assert backend.provision(t)["outputs"] == {"unlisted": "edited"}


def test_log_level_reaches_terraform(backend: TerraformBackend, make_target: MakeTarget, world: Path) -> None:
    t = make_target("file", variables={"dir": str(world)}, logLevel="INFO")
    backend.provision(t)
    assert any("[INFO]" in line for line in backend.logs(t))


# --------------------------------------------------------------------------- drift, changes


def test_deleted_file_is_drift_and_apply_converges(backend: TerraformBackend, make_target: MakeTarget,
                                                   world: Path) -> None:
    t = make_target("file", variables={"dir": str(world)})
    backend.provision(t)
    (world / "made.txt").unlink()

    obs = backend.observe(t)
    assert obs.phase == Phase.running and obs.drifted
    assert "terraform_data.file must be replaced" in obs.message

    backend.provision(t)
    assert (world / "made.txt").read_text() == "hello"
    assert not backend.observe(t).drifted


def test_variable_change_applies_in_place(backend: TerraformBackend, make_target: MakeTarget, world: Path,
                                          runtime: Path) -> None:
    backend.provision(make_target("file", variables={"dir": str(world), "content": "one"}))
    before = state_resources(runtime)

    t2 = make_target("file", variables={"dir": str(world), "content": "two"}, outputs=["greeting"])
    assert backend.observe(t2).spec_hash != t2.spec_hash  # the core sees the spec change
    details = backend.provision(t2)

    assert (world / "made.txt").read_text() == "two"
    assert details["outputs"] == {"greeting": "hello two"}
    assert state_resources(runtime) == before  # the same resources, updated
    assert (world / "created.log").read_text() == "marker\n"  # an unrelated one was not recreated
    obs = backend.observe(t2)
    assert (obs.spec_hash, obs.drifted) == (t2.spec_hash, False)


def test_destroy_removes_resources_then_runtime_dir(backend: TerraformBackend, make_target: MakeTarget,
                                                    world: Path, runtime: Path) -> None:
    t = make_target("file", variables={"dir": str(world)})
    backend.provision(t)
    assert (world / "made.txt").exists()

    backend.deprovision(t)
    assert not (world / "made.txt").exists()
    assert not runtime.exists()
    assert backend.observe(t).phase == Phase.absent
    backend.deprovision(t)  # absent is success


def test_failed_destroy_keeps_runtime_dir_and_state(backend: TerraformBackend, make_target: MakeTarget,
                                                    world: Path, runtime: Path) -> None:
    t = make_target("guarded", variables={"dir": str(world)})
    backend.provision(t)
    (world / "block").touch()

    with pytest.raises(TemporaryError) as err:
        backend.deprovision(t)
    assert err.value.reason == "TerraformFailed" and "still in use" in err.value.message
    assert state_resources(runtime) == ["terraform_data.guarded"]

    (world / "block").unlink()
    backend.deprovision(t)
    assert not runtime.exists()


# --------------------------------------------------------------------------- failures


def test_failing_provisioner_is_a_clear_error_and_state_is_kept(
    backend: TerraformBackend, make_target: MakeTarget, runtime: Path
) -> None:
    t = make_target("failing", variables={"password": "pw-hunter2-xyz"})
    with pytest.raises(TemporaryError) as err:
        backend.provision(t)

    e = err.value
    assert e.reason == "TerraformFailed"
    assert "terraform apply failed (exit 1)" in e.message
    assert "Error: local-exec provisioner error" in e.message
    assert "database refused the connection" in e.message
    assert "pw-hunter2-xyz" not in e.message and "***" in e.message
    assert "Terraform will perform" not in e.message  # only the Error block, not the plan
    assert state_resources(runtime) == ["terraform_data.broken"]  # tainted, kept
    obs = backend.observe(t)
    assert obs.phase == Phase.running and obs.drifted and "tainted" in obs.message
    assert obs.spec_hash is None  # never applied successfully
    assert "pw-hunter2-xyz" not in obs.message


def test_syntax_error_names_the_line(backend: TerraformBackend, make_target: MakeTarget) -> None:
    with pytest.raises(TemporaryError) as err:
        backend.provision(make_target("syntax"))
    assert err.value.reason == "TerraformFailed"
    assert "terraform init failed" in err.value.message
    assert "Error: Invalid expression" in err.value.message
    assert "main.tf line 2" in err.value.message


def test_missing_recipe_directory(backend: TerraformBackend, make_target: MakeTarget, tmp_path: Path) -> None:
    with pytest.raises(TemporaryError) as err:
        backend.provision(make_target(tmp_path / "nowhere"))
    assert err.value.reason == "RecipeNotFound"


def test_timeout_stops_terraform_and_keeps_state(backend: TerraformBackend, make_target: MakeTarget,
                                                 world: Path, runtime: Path) -> None:
    t = make_target("slow", variables={"dir": str(world), "sleep": 30}, timeoutSeconds=1.5)
    start = time.monotonic()
    with pytest.raises(TemporaryError) as err:
        backend.provision(t)
    took = time.monotonic() - start

    assert err.value.reason == "TerraformTimeout"
    assert "timed out after 1.5s" in err.value.message
    assert took < 1.5 + terraform_runner.INTERRUPT_GRACE + 2
    assert not terraform_runner.holders(runtime)
    assert "terraform_data.fast" in state_resources(runtime)
    assert not _working_in(runtime)  # terraform, its shell and the sleep are all gone
    # the next pass finishes the job
    t_ok = make_target("slow", variables={"dir": str(world), "sleep": 0})
    backend.provision(t_ok)
    assert sorted(state_resources(runtime)) == ["terraform_data.fast", "terraform_data.slow"]
    assert (world / "created.log").read_text().count("fast") == 1


def test_missing_binary_is_backend_unavailable(
    backend: TerraformBackend, make_target: MakeTarget, world: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = make_target("file", variables={"dir": str(world)})
    backend.provision(t)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("CONVERGE_CACHE", str(empty))
    monkeypatch.delenv("CONVERGE_TERRAFORM_BIN", raising=False)

    with pytest.raises(BackendUnavailable) as err:
        backend.provision(t)
    assert "neither terraform nor tofu was found" in str(err.value)
    with pytest.raises(BackendUnavailable):
        backend.observe(t)
    monkeypatch.setenv("CONVERGE_TERRAFORM_BIN", str(empty / "terraform"))
    with pytest.raises(BackendUnavailable, match="CONVERGE_TERRAFORM_BIN"):
        backend.deprovision(t)


def test_suspend_is_not_supported(backend: TerraformBackend, make_target: MakeTarget) -> None:
    with pytest.raises(PermanentError, match="inactive"):
        backend.suspend(make_target("file", variables={"dir": "/nonexistent"}))


# --------------------------------------------------------------------------- a real process


def test_background_server_restarted_after_being_killed(backend: TerraformBackend, make_target: MakeTarget,
                                                        world: Path, runtime: Path) -> None:
    port = free_port()
    t = make_target("server", variables={"dir": str(world), "port": port, "python": sys.executable},
                    endpointOutput="endpoint")
    (world / "index.html").write_text("served by terraform\n")

    uri = backend.provision(t)["endpoint"]
    assert uri == f"http://127.0.0.1:{port}"
    assert urllib.request.urlopen(uri, timeout=5).read() == b"served by terraform\n"
    pid = int((world / "server.pid").read_text())

    os.kill(pid, signal.SIGTERM)
    _wait(lambda: not (world / "server.pid").exists(), what="the pid file to go")
    obs = backend.observe(t)
    assert obs.drifted and "terraform_data.server must be replaced" in obs.message

    backend.provision(t)
    new_pid = int((world / "server.pid").read_text())
    assert new_pid != pid
    assert urllib.request.urlopen(uri, timeout=5).status == 200

    backend.deprovision(t)
    _wait(lambda: not psutil.pid_exists(new_pid), what="the server to stop")
    assert not runtime.exists()


# --------------------------------------------------------------------------- killed controller

_CONTROLLER = """
import json, sys
from pathlib import Path
from converge.backends.base import Target
from converge.backends.terraform import TerraformBackend
from converge.api import ServiceKey, TerraformBackend as Spec
a = json.loads(sys.argv[1])
t = Target(key=ServiceKey("default", "svc"), uid="u", config=Spec.model_validate(a["spec"]),
           spec_hash=a["hash"], runtime_dir=Path(a["runtime"]))
TerraformBackend().provision(t)
"""


def _start_controller(t_spec: dict[str, object], spec_hash: str, runtime: Path) -> subprocess.Popen[bytes]:
    arg = json.dumps({"spec": t_spec, "hash": spec_hash, "runtime": str(runtime)})
    return subprocess.Popen([sys.executable, "-c", _CONTROLLER, arg], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_mid_apply(make_target: MakeTarget, world: Path, runtime: Path, everything: bool) -> None:
    """Start a controller applying the slow recipe; SIGKILL it while the slow resource is being
    created (and, with everything, terraform and its provisioner too)."""
    t = make_target("slow", variables={"dir": str(world), "sleep": 3})
    proc = _start_controller(t.config.model_dump(mode="json", by_alias=True), t.spec_hash, runtime)
    log = world / "created.log"
    _wait(lambda: log.exists() and "slow-start" in log.read_text(), timeout=20, what="the slow resource")
    tf = terraform_runner.holders(runtime)
    assert tf, "terraform should be running"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if everything:  # terraform first: a provisioner dying first would let it finish cleanly
        for p in tf:
            children = p.children(recursive=True)
            p.kill()
            p.wait(5)
            for c in children:
                c.kill()


def test_controller_killed_mid_apply_waits_for_its_terraform(backend: TerraformBackend,
                                                              make_target: MakeTarget, world: Path,
                                                              runtime: Path) -> None:
    _kill_mid_apply(make_target, world, runtime, everything=False)
    t = make_target("slow", variables={"dir": str(world), "sleep": 3})

    # terraform runs in its own session: it outlives the controller and still holds the lock
    with pytest.raises(TemporaryError) as err:
        backend.provision(t)
    assert err.value.reason == "StateLocked"
    assert "terraform is still running" in err.value.message and "apply by" in err.value.message

    _wait(lambda: not terraform_runner.holders(runtime), timeout=15, what="the orphaned terraform")
    backend.provision(t)
    assert sorted(state_resources(runtime)) == ["terraform_data.fast", "terraform_data.slow"]
    assert (world / "created.log").read_text().split() == ["fast", "slow-start", "slow-done"]
    assert not (runtime / ".terraform.tfstate.lock.info").exists()
    assert backend.observe(t).phase == Phase.running


def test_everything_killed_mid_apply_recovers_from_stale_lock(backend: TerraformBackend,
                                                              make_target: MakeTarget, world: Path,
                                                              runtime: Path) -> None:
    _kill_mid_apply(make_target, world, runtime, everything=True)
    assert (runtime / ".terraform.tfstate.lock.info").exists()
    # terraform has persisted the resource it finished; OpenTofu persists on an interval and
    # may have written nothing yet (an empty state file): then `fast` is created again
    recorded = state_resources(runtime)
    assert recorded in (["terraform_data.fast"], [])
    t = make_target("slow", variables={"dir": str(world), "sleep": 0})

    obs = backend.observe(t)  # a read-only plan is not blocked by the lock
    if recorded:
        assert obs.drifted and "terraform_data.slow will be created" in obs.message
    else:
        assert obs.phase == Phase.absent

    backend.provision(t)
    assert sorted(state_resources(runtime)) == ["terraform_data.fast", "terraform_data.slow"]
    again = [] if recorded else ["fast"]
    assert (world / "created.log").read_text().split() == ["fast", "slow-start", *again, "slow-start", "slow-done"]
    logs = "\n".join(backend.logs(t))
    assert "stale state lock" in logs and "left by a terraform that was killed" in logs
    assert not (runtime / ".terraform.tfstate.lock.info").exists()


# --------------------------------------------------------------------------- logs


def test_logs_keep_the_last_runs(backend: TerraformBackend, make_target: MakeTarget, world: Path) -> None:
    t = make_target("file", variables={"dir": str(world)})
    backend.provision(t)
    for _ in range(3):
        backend.observe(t)
    names = [p.name.split("-", 1)[1] for p in terraform_runner.run_logs(t.runtime_dir / ".converge" / "logs")]
    assert names == ["init.log", "apply.log", "plan.log"]  # clean plans replace each other
    tail = list(backend.logs(t, tail=3))
    assert len(tail) == 3 and tail[-1].endswith(")") and "plan: exit 0" in tail[-1]

    follow = backend.logs(t, follow=True, tail=0)
    (world / "made.txt").unlink()
    backend.observe(t)
    got = [next(follow) for _ in range(2)]
    follow.close()  # type: ignore[attr-defined]  # a generator
    assert "plan:" in got[0]
