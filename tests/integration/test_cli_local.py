"""The local-mode user flow through the real CLI, real processes, a real file store."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import CLI
from tests.helpers import PY, daemon, free_port, gone, http_service, until, write


def get_url(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status, r.read().decode()


def test_example_stack_end_to_end(cli: CLI, examples: Path) -> None:
    out = cli("apply", "-f", str(examples)).stdout
    assert "managedservice/db created" in out and "managedservice/web created" in out
    cli("reconcile", "--timeout", "60s")
    wide = cli("get", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "STATE", "READY", "BACKEND", "ENDPOINT", "RESTARTS", "AGE", "REASON"]
    rows = {line.split()[0]: line.split() for line in wide[1:]}
    assert set(rows) == {"api", "db", "web"}
    assert all(r[1] == "active" and r[2] == "True" for r in rows.values())
    web = cli.obj("web")
    code, body = get_url(web["status"]["endpoint"]["uri"] + "/")
    assert code == 200 and "converge demo" in body
    desc = cli("describe", "api").stdout
    for want in ("State:              active", "  Pid:", "  Log:", "Ready", "Depends On:         db"):
        assert want in desc, desc
    cli("wait", "api", "--for", "condition=Ready", "--timeout", "5s")
    # The api logs its requests: one via the endpoint, then read it back.
    get_url(cli.obj("api")["status"]["endpoint"]["uri"] + "/hello")
    until(lambda: "GET /hello" in cli("logs", "api", "--tail", "20").stdout, what="log line")


def test_invalid_manifests_are_rejected_and_nothing_is_written(cli: CLI, tmp_path: Path) -> None:
    good = http_service("good")
    cases = {
        "type.yaml": ("spec.endpoint.port", {**good, "spec": {**good["spec"], "endpoint": {"port": "http"}}}),
        "unknown.yaml": ("daemon.colour: unknown field 'colour'", {**good, "spec": {**good["spec"], "backend": {
            "daemon": {"command": ["x"], "colour": "red"}}}}),
        "name.yaml": ("metadata.name", {**good, "metadata": {"name": "Bad_Name"}}),
        "two.yaml": ("exactly one backend", {**good, "spec": {**good["spec"], "backend": {
            "daemon": {"command": ["x"]}, "container": {"image": "x"}}}}),
        "port.yaml": ("spec.endpoint.port", {**good, "spec": {**good["spec"], "endpoint": {"port": 70000}}}),
    }
    for fname, (field, doc) in cases.items():
        d = tmp_path / fname.removesuffix(".yaml")
        d.mkdir()
        write(d / "ok.yaml", good)
        write(d / fname, doc)
        p = cli("apply", "-f", str(d), check=False)
        assert p.returncode == 1, p.stdout
        assert fname in p.stderr and field in p.stderr, p.stderr
        assert "nothing was applied" in p.stderr
        assert not (cli.store / "default" / "good.yaml").exists()
    cyc = tmp_path / "cycle.yaml"
    write(cyc, daemon("a", ["x"], depends=["b"]), daemon("b", ["x"], depends=["c"]), daemon("c", ["x"], depends=["a"]))
    p = cli("apply", "-f", str(cyc), check=False)
    assert p.returncode == 1 and "dependency cycle: a -> b -> c -> a" in p.stderr
    assert cli("get", "-o", "name").stdout == ""


def test_a_cycle_through_stored_services_is_refused(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "ab.yaml", daemon("a", ["x"], depends=["b"]), daemon("b", ["x"], depends=["c"]),
          daemon("other", ["x"], depends=["zz"]))
    cli("apply", "-f", str(tmp_path / "ab.yaml"))
    write(tmp_path / "c.yaml", daemon("c", ["x"], depends=["a"]))
    p = cli("apply", "-f", str(tmp_path / "c.yaml"), check=False)
    assert p.returncode == 1 and "dependency cycle: c -> a -> b -> c" in p.stderr, p.stderr
    assert "c" not in cli("get", "-o", "name").stdout.split("managedservice/")
    write(tmp_path / "c.yaml", daemon("c", ["x"], depends=["other"]))  # no cycle: fine
    assert "created" in cli("apply", "-f", str(tmp_path / "c.yaml")).stdout
    write(tmp_path / "b.yaml", daemon("b", ["x"]))  # b no longer reaches c: a cycle needs a new edge
    assert "configured" in cli("apply", "-f", str(tmp_path / "b.yaml")).stdout
    write(tmp_path / "c.yaml", daemon("c", ["x"], depends=["a"]))
    assert "configured" in cli("apply", "-f", str(tmp_path / "c.yaml")).stdout


def test_multi_document_stdin_and_dry_run(cli: CLI) -> None:
    text = yaml.safe_dump_all([http_service("one"), http_service("two")])
    assert "(dry run)" in cli("apply", "-f", "-", "--dry-run", input=text).stdout
    assert cli("get", "-o", "name").stdout == ""
    out = cli("apply", "-f", "-", input=text).stdout
    assert out.count("created") == 2
    assert cli("apply", "-f", "-", input=text).stdout.count("unchanged") == 2


def test_spec_change_replaces_in_place(cli: CLI, tmp_path: Path) -> None:
    port = free_port()
    m = tmp_path / "svc.yaml"
    write(m, http_service("web", port, env={"GREETING": "v1"}))
    cli("apply", "-f", str(m))
    cli("reconcile", "--timeout", "30s")
    pid1, gen1 = cli.pid("web"), cli.obj("web")["status"]["observedGeneration"]
    assert get_url(f"http://127.0.0.1:{port}/")[1] == "v1"
    write(m, http_service("web", port, env={"GREETING": "v2"}))
    assert "configured" in cli("apply", "-f", str(m)).stdout
    cli("reconcile", "--timeout", "30s")
    obj = cli.obj("web")
    assert obj["status"]["observedGeneration"] == gen1 + 1
    assert cli.pid("web") != pid1 and gone(pid1)
    assert get_url(f"http://127.0.0.1:{port}/")[1] == "v2"
    assert cli("get", "-o", "name").stdout.split() == ["managedservice/web"]


def test_steady_state_pass_writes_nothing(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "s.yaml", http_service("a"), http_service("b", depends=["a"]))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "30s")
    files = sorted((cli.store / "default").glob("*.yaml"))
    before = {f: (f.stat().st_mtime_ns, f.stat().st_ino) for f in files}
    cli("reconcile", "--timeout", "30s")
    assert {f: (f.stat().st_mtime_ns, f.stat().st_ino) for f in files} == before


def test_depends_on_waits_and_down_stops_dependents_first(cli: CLI, tmp_path: Path) -> None:
    gate = tmp_path / "db-health"
    gate.write_text("503")
    db = http_service("db", labels={"stack": "s"}, env={"HEALTH_FILE": str(gate)})
    write(tmp_path / "s.yaml", db, http_service("api", depends=["db"], labels={"stack": "s"}))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    p = cli("reconcile", "--timeout", "2s", check=False)
    assert p.returncode == 1
    ready = {c["type"]: c for c in cli.obj("api")["status"]["conditions"]}["Ready"]
    assert ready["reason"] == "DependencyNotReady" and "db" in ready["message"]
    assert not (cli.store / "_runtime" / "default" / "api" / "daemon.json").exists()
    gate.write_text("200")
    cli("reconcile", "--timeout", "30s")
    assert cli.obj("api")["status"]["state"] == "active"
    out = cli("down", "-l", "stack=s").stderr
    assert out.index("default/api: scaled_to_zero") < out.index("default/db: scaled_to_zero"), out
    for name in ("db", "api"):
        assert psutil.Process(cli.pid(name)).status() == psutil.STATUS_STOPPED
        assert cli.obj(name)["status"]["state"] == "scaled_to_zero"
    cli("up", "-l", "stack=s")
    assert all(cli.obj(n)["status"]["state"] == "active" for n in ("db", "api"))


def test_down_force_and_delete_kill_the_whole_process_group(cli: CLI, tmp_path: Path) -> None:
    svc = http_service("fam", labels={"stack": "x"})
    svc["spec"]["backend"]["daemon"]["command"] += ["--children", "3"]
    write(tmp_path / "s.yaml", svc)
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "30s")
    proc = psutil.Process(cli.pid("fam"))
    family = [proc, *until(lambda: len(proc.children()) == 3 and proc.children())]
    cli("down", "--force", "-l", "stack=x")
    assert cli.obj("fam")["status"]["state"] == "inactive"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    cli("up", "fam")
    pid = cli.pid("fam")
    assert "deleted" in cli("delete", "fam").stdout
    assert gone(pid)
    assert cli("get", "fam", check=False).returncode == 1


def test_corrupt_store_file_is_named_and_others_still_reconcile(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "s.yaml", http_service("fine"))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    bad = cli.store / "default" / "broken.yaml"
    bad.write_text("metadata: {name: broken\nspec: [")
    p = cli("reconcile", "--timeout", "30s", check=False)
    assert p.returncode == 1 and "broken.yaml" in p.stderr
    assert cli.obj("fine")["status"]["state"] == "active"
    g = cli("get", check=False)
    assert "broken.yaml" in g.stderr and "fine" in g.stdout


def test_store_is_private(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "s.yaml", http_service("p"))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "30s")
    assert cli.store.stat().st_mode & 0o777 == 0o700
    for f in [cli.store / "default" / "p.yaml", *cli.store.glob("_runtime/default/p/*")]:
        assert f.stat().st_mode & 0o077 == 0, f


def test_secret_env_never_reaches_status_or_describe(cli: CLI, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value\n")
    svc = http_service("sec")
    svc["spec"]["backend"]["daemon"]["env"] = [{"name": "GREETING", "valueFrom": {"file": str(secret)}}]
    write(tmp_path / "s.yaml", svc)
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "30s")
    port = cli.obj("sec")["status"]["endpoint"]["port"]
    assert get_url(f"http://127.0.0.1:{port}/")[1] == "s3cr3t-value"
    everything = (cli("get", "sec", "-o", "yaml").stdout + cli("describe", "sec").stdout
                  + (cli.store / "default" / "sec.yaml").read_text())
    assert "s3cr3t" not in everything


def test_wait_times_out_with_reason(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "s.yaml", daemon("never", [PY, "-c", "import time; time.sleep(60)"], port=free_port()))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    p = cli("wait", "never", "--for", "condition=Ready", "--timeout", "0.3s", check=False)
    assert p.returncode == 1 and "timed out" in p.stderr


def test_unknown_names_and_bad_usage_fail_cleanly(cli: CLI) -> None:
    for args in (["get", "nope"], ["describe", "nope"], ["delete", "nope"], ["logs", "nope"]):
        p = cli(*args, check=False)
        assert p.returncode == 1 and "not found" in p.stderr, args
    assert cli("get", "-l", "a in b", check=False).returncode == 1


def test_start_failure_is_reported_with_backoff(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "s.yaml", daemon("ghost", ["/nonexistent/binary"], check=None))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    p = cli("reconcile", "--timeout", "1s", check=False)
    assert p.returncode == 1
    st = cli.obj("ghost")["status"]
    assert st["state"] == "error" and "/nonexistent/binary" in st["lastError"]
    assert {c["type"]: c for c in st["conditions"]}["Ready"]["reason"] == "StartFailed"


def test_pid_reuse_is_not_mistaken_for_the_service(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "s.yaml", http_service("reuse"))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "30s")
    # Point the pid file at another live process (as if the pid had been reused).
    pidfile = cli.store / "_runtime" / "default" / "reuse" / "daemon.json"
    old = json.loads(pidfile.read_text())
    os.killpg(old["pid"], signal.SIGKILL)
    until(lambda: gone(old["pid"]))
    stranger = psutil.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        pidfile.write_text(json.dumps({**old, "pid": stranger.pid}))
        cli("reconcile", "--timeout", "30s")
        assert stranger.is_running() and stranger.status() != psutil.STATUS_STOPPED
        assert cli.pid("reuse") != stranger.pid
        assert cli.obj("reuse")["status"]["state"] == "active"
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("n", [2])
def test_concurrent_apply_from_two_processes_loses_nothing(cli: CLI, tmp_path: Path, n: int) -> None:
    files = []
    for i in range(n):
        f = tmp_path / f"batch{i}.yaml"
        write(f, *[daemon(f"s{i}-{j}", ["true"], check=None) for j in range(25)],
              daemon("shared", ["true"], check=None, labels={"writer": str(i)}))
        files.append(f)
    procs = [cli.popen("apply", "-f", str(f)) for f in files]
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
    names = cli("get", "-o", "name").stdout.split()
    assert len(names) == 25 * n + 1
    assert cli.obj("shared")["metadata"]["resourceVersion"] in ("1", "2")


def test_interrupted_start_leaves_no_duplicate(cli: CLI, tmp_path: Path) -> None:
    """A controller killed between fork and pid file: the next pass finds the stray process
    by its uid marker, stops it and starts exactly one."""
    port = free_port()
    write(tmp_path / "s.yaml", http_service("once", port))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    uid = cli.obj("once")["metadata"]["uid"]
    rt = cli.store / "_runtime" / "default" / "once"
    rt.mkdir(parents=True, exist_ok=True)
    (rt / "daemon.starting").touch()
    stray = psutil.Popen([PY, "-c", "import time; time.sleep(60)"], start_new_session=True,
                         env={**os.environ, "CONVERGE_SERVICE_UID": uid})
    try:
        cli("reconcile", "--timeout", "30s")
        assert until(lambda: not stray.is_running() or stray.status() == psutil.STATUS_ZOMBIE, timeout=5)
        assert not (rt / "daemon.starting").exists()
        mine = [p for p in psutil.process_iter(["environ"])
                if (p.info["environ"] or {}).get("CONVERGE_SERVICE_UID") == uid]
        assert [p.pid for p in mine] == [cli.pid("once")]
    finally:
        stray.kill()
        stray.wait()


def test_logs_follow_streams_new_lines(cli: CLI, tmp_path: Path) -> None:
    cmd = [PY, "-u", "-c", "import time\nfor i in range(600):\n    print(f'tick {i}', flush=True); time.sleep(0.05)"]
    write(tmp_path / "s.yaml", daemon("ticker", cmd, check=None))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "30s")
    follower = cli.popen("logs", "ticker", "-f", "--tail", "1")
    try:
        assert follower.stdout is not None
        lines = [follower.stdout.readline().strip() for _ in range(5)]
        numbers = [int(line.split()[1]) for line in lines]
        assert numbers == sorted(numbers) and len(set(numbers)) == 5, lines  # new lines keep coming
    finally:
        follower.kill()
        follower.wait()


def test_namespaces_are_separate(cli: CLI, tmp_path: Path) -> None:
    write(tmp_path / "s.yaml", http_service("svc", labels={"stack": "n"}))
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    cli("-n", "team-b", "apply", "-f", str(tmp_path / "s.yaml"))
    cli("reconcile", "--timeout", "3s", check=False)  # same port twice: one of them must lose
    rows = cli("get", "-A").stdout.splitlines()
    assert rows[0].split()[0] == "NAMESPACE" and len(rows) == 3
    assert (cli.store / "team-b" / "svc.yaml").exists()
    cli("down", "-l", "stack=n")  # the default namespace only
    assert cli.obj("svc")["status"]["state"] == "scaled_to_zero"
    other = json.loads(cli("-n", "team-b", "get", "svc", "-o", "json").stdout)
    assert other["status"]["state"] != "scaled_to_zero"
    cli("down", "--force", "-A", "-l", "")
    assert json.loads(cli("-n", "team-b", "get", "svc", "-o", "json").stdout)["status"]["state"] == "inactive"
