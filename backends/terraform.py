"""The Terraform backend: a service is a recipe (a directory of .tf files) applied with variables.

The reconcile core calls it through the Backend protocol (converge.backends.base). Each service has
a runtime dir (`Target.runtime_dir`, given by the core): the recipe is copied there (or, with
`copy: false`, linked file by file), variables go to `converge.auto.tfvars.json` (never on
the command line), and terraform runs there, so the local state, `.terraform/` and the run
logs (`.converge/logs/`) belong to the service:

    provision    init (once per recipe) + apply -auto-approve; publishes listed outputs
    observe      plan -detailed-exitcode -lock=false: 0 running, 2 drifted, 1 error
    deprovision  destroy -auto-approve; the runtime dir goes only after a successful destroy
    suspend      not meaningful for Terraform (the spec validation rejects it)

State is only ever written by terraform itself. A controller killed mid-apply leaves the
state and possibly a lock: a live terraform still working there is waited for; a stale
lock info file left by a killed terraform is reported and run over (a local state lock is
an OS lock that died with its holder). The CLI is driven through python-terraform's
command-line conventions (converge.backends.terraform_cli) and run by converge.backends.terraform_runner.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from converge.api import TerraformBackend as TerraformSpec
from converge.backends import terraform_cli as cli
from converge.backends import terraform_runner as runner
from converge.backends.base import Notify, Observation, Phase, Target
from converge.backends.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

STATE = "terraform.tfstate"
LOCK_INFO = ".terraform.tfstate.lock.info"
META = ".converge"


class _Workspace:
    """The files of one service's runtime dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / STATE
        self.lock_info = root / LOCK_INFO
        self.vars = root / cli.VARS_FILE
        self.meta = root / META
        self.recipe_stamp = self.meta / "recipe.json"
        self.init_stamp = self.meta / "init"
        self.applied = self.meta / "applied"
        self.varfiles = self.meta / "varfiles"
        self.logs = self.meta / "logs"

    def read(self, path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except OSError:
            return None

    def write(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def resources(self) -> list[str]:
        """Managed resource instances in the local state ([] if there is none)."""
        if not self.state.exists():
            return []
        try:
            state = json.loads(self.state.read_text() or "{}")
        except (OSError, ValueError) as exc:
            raise TemporaryError(
                f"cannot read the state {self.state}: {exc}", reason="StateUnreadable"
            ) from exc
        return cli.managed_resources(state)


class TerraformBackend:
    """Backend for `spec.backend.terraform`."""

    kind = "terraform"

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Path, threading.Lock] = {}

    # ----------------------------------------------------------------- protocol

    def provision(self, target: Target) -> Mapping[str, Any]:
        spec = _spec(target)
        ws = _Workspace(target.runtime_dir)
        with self._lock(ws):
            binary = runner.find_binary()
            ws.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._check_lock(ws)  # before touching the recipe a running terraform may be using
            var_files = self._prepare(ws, spec, target.spec_hash)
            env = runner.child_env(spec.logLevel)
            self._init(ws, binary, env, spec)
            res = self._run(ws, cli.apply_argv(binary, var_files), env, spec, "apply")
            if not res.ok:
                raise _failure("apply", res, spec)
            ws.write(ws.applied, target.spec_hash + "\n")
            return self._details(ws, binary, env, spec)

    def deprovision(self, target: Target) -> None:
        spec = _spec(target)
        ws = _Workspace(target.runtime_dir)
        with self._lock(ws):
            if not ws.root.exists():
                return
            self._check_lock(ws)
            if not ws.resources():
                shutil.rmtree(ws.root)  # nothing was ever created, or it is destroyed already
                return
            binary = runner.find_binary()
            var_files = self._var_files(ws)
            ws.write(ws.vars, cli.tfvars_json(spec.variables))
            env = runner.child_env(spec.logLevel)
            self._init(ws, binary, env, spec)
            res = self._run(ws, cli.destroy_argv(binary, var_files), env, spec, "destroy")
            if not res.ok:
                raise _failure("destroy", res, spec)
            shutil.rmtree(ws.root)

    def suspend(self, target: Target) -> None:
        raise PermanentError(
            "the terraform backend cannot suspend a service: set adminState 'inactive' to destroy "
            "it or 'active' to apply it",
            reason="SuspendNotSupported",
        )

    def observe(self, target: Target) -> Observation:
        spec = _spec(target)
        ws = _Workspace(target.runtime_dir)
        with self._lock(ws):
            applied = ws.read(ws.applied) or None
            if not ws.resources():
                why = "never applied" if not ws.state.exists() else "the state holds no resources"
                return Observation(Phase.absent, message=why, spec_hash=applied)
            binary = runner.find_binary()
            env = runner.child_env(spec.logLevel)
            self._init(ws, binary, env, spec)
            res = self._run(ws, cli.plan_argv(binary, self._var_files(ws)), env, spec, "plan")
            if res.timed_out or res.returncode not in (0, 2):
                return Observation(
                    Phase.error, message=_failure("plan", res, spec).message, spec_hash=applied,
                    details={"runtimeDir": str(ws.root)},
                )
            details = self._details(ws, binary, env, spec)
            if res.returncode == 2:
                msg = cli.scrub_values(cli.drift_message(res.output), cli.secret_strings(spec.variables))
                return Observation(
                    Phase.running, message=msg, details=details, spec_hash=applied, drifted=True
                )
            return Observation(Phase.running, details=details, spec_hash=applied)

    def logs(self, target: Target, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        return runner.read_lines(_Workspace(target.runtime_dir).logs, follow, tail)

    def watch(self, notify: Notify) -> None:
        """Nothing tells us about drift: the runtime's periodic resync plans for it."""

    def close(self) -> None:
        """No clients or threads to release."""

    # ----------------------------------------------------------------- helpers

    def _lock(self, ws: _Workspace) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(ws.root, threading.Lock())

    def _prepare(self, ws: _Workspace, spec: TerraformSpec, spec_hash: str) -> list[str]:
        """Put the recipe and the variables in the runtime dir; the -var-file arguments."""
        source = Path(spec.directory).expanduser().absolute()
        stamp = _load_json(ws.read(ws.recipe_stamp))
        if not spec.copy_ or stamp.get("hash") != spec_hash or not stamp.get("copy"):
            if not source.is_dir():
                raise TemporaryError(f"the recipe directory {source} does not exist", reason="RecipeNotFound")
            var_sources = [_var_file(v, source) for v in spec.variableFiles]
            entries = _entries(source)
            old = sorted(set(stamp.get("entries") or []) | set(entries))
            # Mark the recipe as half-installed first, so a crash in between redoes it all.
            ws.write(ws.recipe_stamp, json.dumps({"hash": "", "entries": old}))
            _install_recipe(ws, source, old, spec.copy_)
            var_files = _install_var_files(ws, var_sources, spec.copy_)
            ws.write(ws.recipe_stamp, json.dumps(
                {"hash": spec_hash, "copy": spec.copy_, "source": str(source), "entries": entries,
                 "varFiles": var_files}))
        ws.write(ws.vars, cli.tfvars_json(spec.variables))
        return self._var_files(ws)

    def _var_files(self, ws: _Workspace) -> list[str]:
        files = _load_json(ws.read(ws.recipe_stamp)).get("varFiles") or []
        return [str(f) for f in files]

    def _init(self, ws: _Workspace, binary: str, env: Mapping[str, str], spec: TerraformSpec) -> None:
        """`terraform init` once per installed recipe (the stamp holds the recipe's hash)."""
        recipe = str(_load_json(ws.read(ws.recipe_stamp)).get("hash", ""))
        if ws.read(ws.init_stamp) == recipe:
            return
        res = runner.run(cli.init_argv(binary), ws.root, env, spec.timeoutSeconds, ws.logs, "init")
        if not res.ok:
            raise _failure("init", res, spec)
        ws.write(ws.init_stamp, recipe + "\n")

    def _run(
        self, ws: _Workspace, argv: list[str], env: Mapping[str, str], spec: TerraformSpec, label: str
    ) -> runner.RunResult:
        """Run a command; if terraform asks for init (a changed recipe), init and run it again."""
        res = runner.run(argv, ws.root, env, spec.timeoutSeconds, ws.logs, label)
        if not res.ok and not res.timed_out and cli.needs_init(res.output):
            ws.init_stamp.unlink(missing_ok=True)
            self._init(ws, argv[0], env, spec)
            res = runner.run(argv, ws.root, env, spec.timeoutSeconds, ws.logs, label)
        if not res.ok and cli.is_lock_error(res.output):
            self._check_lock(ws)  # names the holder if there is one
            excerpt = cli.error_excerpt(res.output)
            raise TemporaryError(
                f"terraform {label}: the state is locked by another process\n{excerpt}", reason="StateLocked"
            )
        return res

    def _check_lock(self, ws: _Workspace) -> None:
        """A terraform still working here is waited for; a lock left by a killed one is noted."""
        live = runner.holders(ws.root)
        info = cli.parse_lock_info(ws.read(ws.lock_info) or "")
        if live:
            pids = ", ".join(str(p.pid) for p in live)
            held = f" holding {info.describe()}" if info else ""
            raise TemporaryError(
                f"terraform is still running in {ws.root} (pid {pids}){held}, e.g. left by a controller "
                "that was stopped; waiting for it to finish",
                reason="StateLocked",
            )
        if info:
            msg = (f"stale state {info.describe()} found in {ws.root}, left by a terraform that was killed; "
                   "a local state lock is released with its process, so the next run takes it over "
                   "(state kept as it is)")
            log.warning(msg)
            runner.note(ws.logs, msg)

    def _details(
        self, ws: _Workspace, binary: str, env: Mapping[str, str], spec: TerraformSpec
    ) -> dict[str, Any]:
        details: dict[str, Any] = {"runtimeDir": str(ws.root)}
        if not spec.outputs and not spec.endpointOutput:
            return details
        res = runner.capture(cli.output_argv(binary), ws.root, env, min(spec.timeoutSeconds, 60))
        raw = cli.parse_outputs(res.output) if res.ok else {}
        details["outputs"] = cli.published_outputs(raw, spec.outputs)
        endpoint = cli.endpoint_output(raw, spec.endpointOutput)
        if endpoint:
            details["endpoint"] = endpoint
        return details


# --------------------------------------------------------------------------- module helpers


def _spec(target: Target) -> TerraformSpec:
    config = target.config
    if isinstance(config, TerraformSpec):
        return config
    try:
        return TerraformSpec.model_validate(config)
    except ValueError as exc:
        raise PermanentError(f"invalid terraform backend spec: {exc}") from exc


def _failure(what: str, res: runner.RunResult, spec: TerraformSpec) -> TemporaryError:
    if res.timed_out:
        head = f"terraform {what} timed out after {spec.timeoutSeconds:g}s and was stopped (state kept)"
        reason = "TerraformTimeout"
    else:
        head = f"terraform {what} failed (exit {res.returncode})"
        reason = "TerraformFailed"
    excerpt = cli.scrub_values(cli.error_excerpt(res.output), cli.secret_strings(spec.variables))
    return TemporaryError(f"{head}:\n{excerpt}" if excerpt else head, reason=reason)


def _load_json(text: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _entries(source: Path) -> list[str]:
    return sorted(p.name for p in source.iterdir() if p.name not in cli.COPY_IGNORED)


def _install_recipe(ws: _Workspace, source: Path, previous: list[str], copy: bool) -> None:
    """Replace the recipe entries in the runtime dir by copies of (or links to) the source's."""
    for name in previous:
        if name in cli.COPY_IGNORED:
            continue
        path = ws.root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for name in _entries(source):
        src, dst = source / name, ws.root / name
        if not copy:
            dst.symlink_to(src)
        elif src.is_dir():
            shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".terraform"))
        else:
            shutil.copy2(src, dst)


def _var_file(name: str, recipe: Path) -> Path:
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = path.absolute() if path.exists() else (recipe / path).absolute()
    if not path.is_file():
        raise TemporaryError(
            f"variable file {name} not found (looked at {path})", reason="VariableFileNotFound"
        )
    return path


def _install_var_files(ws: _Workspace, sources: list[Path], copy: bool) -> list[str]:
    if ws.varfiles.exists():
        shutil.rmtree(ws.varfiles)
    if not copy:
        return [str(p) for p in sources]
    ws.varfiles.mkdir(parents=True, mode=0o700)
    out: list[str] = []
    for i, src in enumerate(sources):
        dst = ws.varfiles / f"{i:02d}-{src.name}"
        shutil.copyfile(src, dst)  # not copy2: the source's mode (0644) must not come along
        dst.chmod(0o600)
        out.append(str(dst.absolute()))  # terraform runs in the runtime dir: a relative store path breaks
    return out
