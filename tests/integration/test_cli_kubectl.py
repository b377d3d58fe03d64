"""kubectl habits of the CLI, through the real `converge` process and a real file store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tests.conftest import CLI
from tests.helpers import PY, daemon, gone, http_service, until, write


def sleeper(name: str, **kw: object) -> dict:
    return daemon(name, [PY, "-c", "import time; time.sleep(600)"], check=None, **kw)  # type: ignore[arg-type]


def test_global_flags_before_or_after_the_subcommand(cli: CLI, tmp_path: Path) -> None:
    m = write(tmp_path / "s.yaml", sleeper("a"))
    other = tmp_path / "other-store"
    cli("apply", "-f", str(m), "-n", "team-b", "--store", str(other))
    assert (other / "team-b" / "a.yaml").exists()
    assert cli("--store", str(other), "get", "-o", "name", "-n", "team-b").stdout.split() == ["managedservice/a"]
    assert cli("get", "--namespace=team-b", "-o", "name", "--store", str(other)).stdout.split() == [
        "managedservice/a"]
    assert not (cli.store / "team-b").exists()
    # -v after the subcommand turns on debug logging
    p = cli("get", "-v", "-o", "name", "--store", str(other), "-n", "team-b")
    assert p.stdout.split() == ["managedservice/a"]
    # a subcommand's flag wins over the same flag before it
    assert cli("-n", "nope", "get", "-n", "team-b", "-o", "name", "--store", str(other)).stdout.strip()
    # cluster flags are accepted anywhere; a kubeconfig that cannot be read is one line, exit 1
    (tmp_path / "kc").write_text("not: [a kubeconfig")
    for args in (["--kubeconfig", str(tmp_path / "kc"), "get"], ["get", "--kubeconfig", str(tmp_path / "kc")],
                 ["get", "--context", "x"]):
        p = cli(*args, check=False)
        assert p.returncode == 1 and "kubeconfig" in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = cli("get", "--kubeconfig", "kc", "--store", str(other), check=False)
    assert p.returncode == 1 and "choose one" in p.stderr


def test_get_names_prints_what_exists_and_fails_on_the_rest(cli: CLI, tmp_path: Path) -> None:
    cli("apply", "-f", str(write(tmp_path / "s.yaml", sleeper("a"), sleeper("b"))))
    p = cli("get", "a", "nope", "b", check=False)
    assert p.returncode == 1
    assert [line.split()[0] for line in p.stdout.splitlines()] == ["NAME", "a", "b"]
    assert 'managedservices "nope" not found' in p.stderr
    p = cli("get", "a", "nope", "-o", "name", check=False)
    assert p.returncode == 1 and p.stdout.split() == ["managedservice/a"]


def test_get_custom_columns(cli: CLI, tmp_path: Path) -> None:
    cli("apply", "-f", str(write(tmp_path / "s.yaml", sleeper("a", labels={"stack": "x"}),
                                 sleeper("b", depends=["a"]))))
    cli("reconcile", "--timeout", "30s")
    out = cli("get", "-o",
              'custom-columns=NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,'
              "STACK:.metadata.labels.stack,DEPS:.spec.dependsOn[*]").stdout.splitlines()
    assert [line.split() for line in out] == [["NAME", "READY", "STACK", "DEPS"], ["a", "True", "x", "<none>"],
                                              ["b", "True", "<none>", "a"]]
    p = cli("get", "-o", "custom-columns=NAME", check=False)
    assert p.returncode == 2 and "HEADER:PATH" in p.stderr
    p = cli("get", "-o", "table", check=False)
    assert p.returncode == 2 and "custom-columns" in p.stderr


def test_wide_reason_is_cut_with_an_ellipsis(cli: CLI, tmp_path: Path) -> None:
    cli("apply", "-f", str(write(tmp_path / "s.yaml", daemon("long", ["/nonexistent/" + "x" * 120], check=None))))
    cli("reconcile", "--timeout", "1s", check=False)
    row = cli("get", "long", "-o", "wide").stdout.splitlines()[1]
    assert row.endswith("…") and "StartFailed" in row


def test_get_watch_streams_changes(cli: CLI, tmp_path: Path) -> None:
    cli("apply", "-f", str(write(tmp_path / "s.yaml", sleeper("a"))))
    watcher = cli.popen("get", "-w")
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().split()[0] == "NAME"
        assert watcher.stdout.readline().split()[:2] == ["a", "inactive"]
        cli("apply", "-f", str(write(tmp_path / "t.yaml", sleeper("b"))))
        assert watcher.stdout.readline().split()[:2] == ["b", "inactive"]
        cli("reconcile", "--timeout", "30s")
        seen = set()
        until(lambda: seen.add(tuple(watcher.stdout.readline().split()[:2])) or  # type: ignore[union-attr]
              {("a", "active"), ("b", "active")} <= seen, timeout=30, what="active rows")
        cli("delete", "b")
        until(lambda: watcher.stdout.readline().split()[:2] == ["b", "<deleted>"],  # type: ignore[union-attr]
              timeout=30, what="deleted row")
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_delete_by_names_selector_all_and_file(cli: CLI, tmp_path: Path) -> None:
    m = write(tmp_path / "s.yaml", sleeper("a", labels={"t": "1"}), sleeper("b", labels={"t": "1"}),
              sleeper("c"), sleeper("d"), sleeper("e"))
    cli("apply", "-f", str(m))
    cli("reconcile", "--timeout", "30s")
    pids = {n: cli.pid(n) for n in "abcde"}
    p = cli("delete", "-l", "t=1")
    assert sorted(p.stdout.split()) == sorted(["managedservice/a", "deleted", "managedservice/b", "deleted"])
    assert gone(pids["a"]) and gone(pids["b"])
    p = cli("delete", "c", "nope", "d", check=False)
    assert p.returncode == 1 and 'managedservices "nope" not found' in p.stderr
    assert "managedservice/c deleted" in p.stdout and "managedservice/d deleted" in p.stdout
    assert cli("delete", "nope", "--ignore-not-found").returncode == 0
    assert cli("get", "-o", "name").stdout.split() == ["managedservice/e"]
    # -f deletes what a manifest declares (e exists; the others are already gone)
    p = cli("delete", "-f", str(m), check=False)
    assert p.returncode == 1 and "managedservice/e deleted" in p.stdout
    assert gone(pids["e"])
    cli("apply", "-f", str(m))
    cli("delete", "-f", str(tmp_path))
    cli("apply", "-f", str(m))
    assert len(cli("delete", "--all").stdout.splitlines()) == 5
    assert cli("get", "-o", "name").stdout == ""
    for bad in (["delete"], ["delete", "a", "--all"], ["delete", "-l", "t=1", "-f", str(m)]):
        p = cli(*bad, check=False)
        assert p.returncode == 2 and "give" in p.stderr, bad


def test_wait_forms(cli: CLI, tmp_path: Path) -> None:
    m = write(tmp_path / "s.yaml", sleeper("a", labels={"s": "w"}, admin="inactive"),
              sleeper("b", labels={"s": "w"}, admin="inactive"))
    cli("apply", "-f", str(m))
    # unknown --for forms are rejected at once, before any waiting
    for bad in ("Ready", "condition=Ready=perhaps", "jsonpath={.status}", "deleted"):
        t0 = time.monotonic()
        p = cli("wait", "a", "--for", bad, "--timeout", "30s", check=False)
        assert p.returncode == 2 and "--for" in p.stderr and time.monotonic() - t0 < 10, (bad, p.stderr)
    p = cli("wait", "a", "--for", "condition=Ready", "--timeout", "0.2s", check=False)
    assert p.returncode == 1 and "timed out after 0.2s" in p.stderr and "no Ready condition yet" in p.stderr
    cli("reconcile", "--timeout", "30s")
    assert "managedservice/b condition met" in cli("wait", "a", "b", "--for", "condition=ready=FALSE").stdout
    cli("up", "-l", "s=w")
    out = cli("wait", "-l", "s=w", "--for", "condition=READY", "--timeout", "5s").stdout
    assert out.splitlines() == ["managedservice/a condition met", "managedservice/b condition met"]
    assert cli("wait", "--all", "--timeout", "5s").stdout.count("condition met") == 2
    waiter = cli.popen("wait", "a", "b", "--for", "delete", "--timeout", "60s")
    time.sleep(0.5)
    assert waiter.poll() is None
    cli("delete", "--all")
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and "managedservice/a deleted" in out and "managedservice/b deleted" in out
    assert cli("wait", "gone-already", "--for", "delete", "--timeout", "1s").returncode == 0
    assert cli("wait", "nope", "--timeout", "1s", check=False).returncode == 1


def test_diff_shows_what_apply_would_change(cli: CLI, tmp_path: Path) -> None:
    m = write(tmp_path / "s.yaml", sleeper("a"))
    p = cli("diff", "-f", str(m), check=False)
    assert p.returncode == 1 and "+++ merged/default/a" in p.stdout and "--- /dev/null" in p.stdout
    cli("apply", "-f", str(m))
    p = cli("diff", "-f", str(m))
    assert p.returncode == 0 and p.stdout == ""
    changed = sleeper("a", labels={"tier": "x"}, admin="suspended")
    write(m, changed)
    p = cli("diff", "-f", str(tmp_path), check=False)
    assert p.returncode == 1
    assert "-  adminState: active" in p.stdout and "+  adminState: suspended" in p.stdout
    assert "+    tier: x" in p.stdout
    assert cli.obj("a")["spec"]["adminState"] == "active"  # diff writes nothing
    bad = write(tmp_path / "bad.yaml", {**changed, "spec": {**changed["spec"], "colour": "red"}})
    p = cli("diff", "-f", str(bad), check=False)
    assert p.returncode == 2 and "colour" in p.stderr


def test_logs_of_a_service_that_never_started(cli: CLI, tmp_path: Path) -> None:
    cli("apply", "-f", str(write(tmp_path / "s.yaml", sleeper("idle"))))
    p = cli("logs", "idle", check=False)
    assert p.returncode == 1 and "not started" in p.stderr, p.stderr


def test_logs_tail_minus_one_means_all(cli: CLI, tmp_path: Path) -> None:
    cmd = [PY, "-u", "-c", "import time\nfor i in range(30): print(f'line {i}')\ntime.sleep(600)"]
    cli("apply", "-f", str(write(tmp_path / "s.yaml", daemon("talk", cmd, check=None))))
    cli("reconcile", "--timeout", "30s")
    until(lambda: "line 29" in cli("logs", "talk").stdout)
    assert cli("logs", "talk", "--tail", "-1").stdout.splitlines() == [f"line {i}" for i in range(30)]
    assert cli("logs", "talk", "--tail", "2").stdout.splitlines() == ["line 28", "line 29"]


def test_validation_errors_suggest_the_field_and_name_the_document_once(cli: CLI, tmp_path: Path) -> None:
    good = http_service("good")
    bad = http_service("typo")
    bad["spec"]["backend"]["daemon"]["comand"] = bad["spec"]["backend"]["daemon"].pop("command")
    bad["spec"]["endpont"] = bad["spec"].pop("endpoint")
    m = write(tmp_path / "s.yaml", good, bad)
    p = cli("apply", "-f", str(m), check=False)
    assert p.returncode == 1
    assert "unknown field 'comand' (did you mean 'command'?)" in p.stderr
    assert "unknown field 'endpont' (did you mean 'endpoint'?)" in p.stderr
    assert "Extra inputs" not in p.stderr
    assert p.stderr.count('ManagedService "typo"') == 1, p.stderr
    assert "nothing was applied" in p.stderr


def test_down_force_help_says_objects_stay_and_completion_works(cli: CLI, tmp_path: Path) -> None:
    assert "objects stay" in " ".join(cli("down", "--help").stdout.split())
    cli("apply", "-f", str(write(tmp_path / "s.yaml", sleeper("alpha"), sleeper("beta"))))
    env = {**cli.env, "_CONVERGE_COMPLETE": "bash_complete", "COMP_WORDS": "converge describe al", "COMP_CWORD": "2"}
    import subprocess

    from tests.conftest import CONVERGE

    p = subprocess.run([CONVERGE], env=env, capture_output=True, text=True, timeout=60)
    assert "alpha" in p.stdout and "beta" not in p.stdout, p.stdout + p.stderr
    # the store and namespace flags on the command line are used
    other = tmp_path / "other"
    cli("apply", "-f", str(write(tmp_path / "t.yaml", sleeper("alpaca"))), "--store", str(other), "-n", "zoo")
    env["COMP_WORDS"] = f"converge describe --store {other} -n zoo al"
    env["COMP_CWORD"] = "6"
    p = subprocess.run([CONVERGE], env=env, capture_output=True, text=True, timeout=60)
    assert "alpaca" in p.stdout and "alpha" not in p.stdout, p.stdout + p.stderr
    src = cli("--help").stdout
    assert "_CONVERGE_COMPLETE" in src


def test_yaml_output_of_several_is_a_list(cli: CLI, tmp_path: Path) -> None:
    cli("apply", "-f", str(write(tmp_path / "s.yaml", sleeper("a"), sleeper("b"))))
    doc = yaml.safe_load(cli("get", "a", "b", "-o", "yaml").stdout)
    assert doc["kind"] == "List" and [i["metadata"]["name"] for i in doc["items"]] == ["a", "b"]
    assert json.loads(cli("get", "a", "-o", "json").stdout)["metadata"]["name"] == "a"


# ---------------------------------------------------------------------------- honest status text

FLAKY = ("import os, sys, time\n"
         "flag = sys.argv[1]\n"
         "if not os.path.exists(flag):\n"
         "    open(flag, 'w').close(); print('first run: failing on purpose', flush=True); sys.exit(3)\n"
         "time.sleep(600)\n")


def test_crash_text_is_honest_and_not_repeated_once_healthy(cli: CLI, tmp_path: Path) -> None:
    svc = daemon("flaky", [PY, "-u", "-c", FLAKY, str(tmp_path / "flag")], check=None,
                 restart={"backoffSeconds": 0.2, "maxBackoffSeconds": 1, "resetAfterSeconds": 600})
    cli("apply", "-f", str(write(tmp_path / "s.yaml", svc)))
    log = cli("reconcile", "--timeout", "30s").stderr  # may settle before the first run fails
    until(lambda: (tmp_path / "flag").exists(), timeout=30, what="the first run")
    time.sleep(0.5)
    log += cli("reconcile", "--timeout", "30s").stderr  # notices the exit, restarts
    assert "flaky: active" in log, log
    for line in log.splitlines():  # no stale error repeated on a later transition
        if "flaky: active" in line or "flaky: pending_startup (starting)" in line:
            assert "exited" not in line and "failing on purpose" not in line, log
    assert "last log lines" not in log and not any(line.rstrip().endswith(":") for line in log.splitlines()), log
    st = cli.obj("flaky")["status"]
    assert st["restarts"] == 1, (st, log)
    # A later `converge` process cannot know the exit code of a process it did not start
    first, *rest = st["lastError"].splitlines()
    assert first.startswith("process ") and " exited" in first and rest == ["first run: failing on purpose"], st
    desc = cli("describe", "flaky").stdout
    assert "Last Error:" in desc and "failing on purpose" in desc and "Restarts:           1" in desc, desc


def test_describe_reads_like_kubectl(cli: CLI, tmp_path: Path) -> None:
    import re

    cli("apply", "-f", str(write(tmp_path / "s.yaml", sleeper("d", labels={"b": "2", "a": "1"}))))
    desc = cli("describe", "d").stdout
    assert "None" not in desc and "observed" not in desc, desc
    assert "Generation:         1 (not reconciled yet)" in desc
    assert re.search(r"^Labels:\s+a=1\n\s+b=2$", desc, re.MULTILINE), desc
    cli("reconcile", "--timeout", "30s")
    desc = cli("describe", "d").stdout
    assert re.search(r"^Creation Timestamp:\s+\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000 ", desc, re.MULTILINE)
    assert re.search(r"^Generation:\s+1$", desc, re.MULTILINE), desc
    assert re.search(r"^  Type\s+Status\s+Reason\s+Age\s+Message\n  ----", desc, re.MULTILINE), desc
    assert re.search(r"^  Ready\s+True\s+Running\s+\d+s", desc, re.MULTILINE), desc
    assert "+00:00" not in desc and not re.search(r"\d\d:\d\d:\d\d\.\d", desc)
    # -o yaml/json: RFC 3339 in whole seconds, as the API server writes them
    obj = cli.obj("d")
    stamps = [obj["metadata"]["creationTimestamp"], *(c["lastTransitionTime"] for c in obj["status"]["conditions"])]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t) for t in stamps), stamps
    assert re.search(r"creationTimestamp: '?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ'?$",
                     cli("get", "d", "-o", "yaml").stdout, re.MULTILINE)


def test_log_path_is_absolute_with_a_relative_store(cli: CLI, tmp_path: Path) -> None:
    cli("apply", "-f", str(write(tmp_path / "s.yaml", sleeper("rel"))), "--store", "relstore")
    cli("reconcile", "--timeout", "30s", "--store", "relstore")
    log = json.loads(cli("get", "rel", "-o", "json", "--store", "relstore").stdout)["status"]["backend"]["log"]
    assert Path(log).is_absolute() and Path(log).exists()
    assert log.startswith(str(tmp_path / "relstore"))
    cli("down", "--force", "-l", "", "--store", "relstore")


def test_daemon_without_working_dir_runs_in_the_manifests_folder(cli: CLI, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "serve.py").write_text("import pathlib, time\npathlib.Path('started').write_text('yes')\ntime.sleep(600)\n")
    m = write(app / "s.yaml", daemon("rel", [PY, "serve.py"], check=None))
    other = tmp_path / "elsewhere"
    other.mkdir()
    cli.cwd = other  # apply from another folder: the relative script is still found
    cli("apply", "-f", str(m))
    assert cli.obj("rel")["spec"]["backend"]["daemon"]["workingDir"] == str(app)
    cli("reconcile", "--timeout", "30s")
    until(lambda: (app / "started").exists(), what="the script's file in the manifest's folder")
    assert cli.obj("rel")["status"]["state"] == "active"


def test_delete_of_a_stack_stops_dependents_first(cli: CLI, tmp_path: Path) -> None:
    m = write(tmp_path / "s.yaml", http_service("db", labels={"s": "x"}),
              http_service("api", depends=["db"], labels={"s": "x"}))
    cli("apply", "-f", str(m))
    cli("reconcile", "--timeout", "30s")
    p = cli("delete", "-l", "s=x")
    assert p.stdout.splitlines() == ["managedservice/api deleted", "managedservice/db deleted"], p.stdout
    assert p.stderr.index("default/api: deleted") < p.stderr.index("default/db: deleted"), p.stderr
