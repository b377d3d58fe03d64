"""valueFrom values never reach anything converge writes or prints, even when the service
prints them itself; a secret can never be expanded into a command line."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.conftest import CLI
from tests.helpers import PY, daemon, until, write

SECRET = "s3cr3t-Kx7-value"
ENV_SECRET = "env-s3cr3t-Qz9"
LEAKY = ("import os, sys\n"
         "print('token is', os.environ['TOKEN'], 'and', os.environ['OTHER'], flush=True)\n"
         "print(os.environ['TOKEN'] + os.environ['OTHER'], flush=True)\n"
         "sys.stderr.write('fatal: bad token ' + os.environ['TOKEN'] + '\\n')\n"
         "sys.exit(3)\n")


def _files_under(root: Path) -> str:
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if n.startswith("daemon.log"):
                continue  # the service's own output: written by it, not by converge
            out.append(p.read_text(errors="replace"))
    return "\n".join(out)


def test_a_service_printing_its_secrets_leaks_them_nowhere(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(SECRET + "\n")
    cli.env["LEAKY_OTHER"] = ENV_SECRET
    svc = daemon("leaky", [PY, "-c", LEAKY], restart={"backoffSeconds": 0.1, "maxBackoffSeconds": 0.2})
    svc["spec"]["backend"]["daemon"]["env"] = [{"name": "TOKEN", "valueFrom": {"file": str(tmp_path / "token")}},
                                               {"name": "OTHER", "valueFrom": {"env": "LEAKY_OTHER"}}]
    write(tmp_path / "s.yaml", svc)
    cli("apply", "-f", str(tmp_path / "s.yaml"))
    run = cli.popen("run")  # the controller, restarting the crash-looping service
    try:
        until(lambda: cli.obj("leaky")["status"].get("restarts", 0) >= 2, timeout=30, interval=0.2,
              what="two restarts")
    finally:
        run.send_signal(signal.SIGINT)
        controller_log, _ = run.communicate(timeout=30)
    rec = cli("reconcile", "--timeout", "2s", check=False)
    log = (cli.store / "_runtime" / "default" / "leaky" / "daemon.log").read_text()
    assert SECRET in log and ENV_SECRET in log  # the service did print them
    obj = cli.obj("leaky")
    assert "***" in obj["status"]["lastError"], obj["status"]
    shown = {
        "run (controller log)": controller_log,
        "reconcile": rec.stdout + rec.stderr,
        "get -o yaml": cli("get", "leaky", "-o", "yaml").stdout,
        "get -o json": json.dumps(obj),
        "describe": cli("describe", "leaky").stdout,
        "logs": cli("logs", "leaky").stdout,
        "logs --tail": cli("logs", "leaky", "--tail", "3").stdout,
        "store files": _files_under(cli.store),
    }
    assert "***" in shown["logs"]
    for what, text in shown.items():
        for secret in (SECRET, ENV_SECRET, "s3cr3t"):
            assert secret not in text, f"{secret!r} in {what}:\n{text}"


def test_a_secret_expanded_into_the_command_line_is_refused_at_apply(cli: CLI, tmp_path: Path) -> None:
    svc = daemon("argv", [PY, "-c", "pass", "--token=$(TOKEN)"])
    svc["spec"]["backend"]["daemon"]["env"] = [{"name": "TOKEN", "valueFrom": {"env": "HOME"}},
                                               {"name": "PLAIN", "value": "ok"}]
    write(tmp_path / "s.yaml", svc)
    p = cli("apply", "-f", str(tmp_path / "s.yaml"), check=False)
    assert p.returncode == 1 and "spec.backend.daemon.env" in p.stderr and "command[3]" in p.stderr, p.stderr
    assert not cli.store.exists()
    # $$(TOKEN) is a literal "$(TOKEN)", and plain values still expand
    svc["spec"]["backend"]["daemon"]["command"] = [PY, "-c", "pass", "--token=$$(TOKEN)", "$(PLAIN)"]
    write(tmp_path / "s.yaml", svc)
    cli("apply", "-f", str(tmp_path / "s.yaml"))
