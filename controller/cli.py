"""The `converge` command line: kubectl-shaped, a thin layer over converge.client.

Exit codes: 0 success; 1 the command failed (invalid manifest, not found, timed out,
not converged; `diff`: there are differences); 2 bad usage (`diff`: also any error, as
`kubectl diff`). Errors go to stderr, one per line, naming file, object and field;
nothing is written when any input is invalid.

Global flags (`--store`, `-n`, `-v`, `--kubeconfig`, `--context`) work before or after
the subcommand, as kubectl's do. Imports of converge's modules stay inside the
functions that need them, so `converge --help` and completion start fast.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from converge.api import ManagedService, ServiceKey
    from converge.client import Client
    from converge.outcome import Outcome
    from converge.waiting import WaitFor

F = TypeVar("F", bound=Callable[..., Any])
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
OUTPUTS = "wide|yaml|json|name|custom-columns=HEADER:PATH,..."


def parse_duration(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 30s, 2m, 1h)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class StoreChoiceError(Exception):
    pass


def uses_cluster(store: str | None, kubeconfig: str | None, context: str | None) -> bool:
    """Flags first (--store, or --kubeconfig/--context), then the environment
    ($CONVERGE_STORE, then $KUBECONFIG); the file store when nothing names a store."""
    if store is not None and (kubeconfig is not None or context is not None):
        raise StoreChoiceError("--store and --kubeconfig/--context name two different stores: choose one")
    if store is not None:
        return False
    if kubeconfig is not None or context is not None:
        return True
    return not os.environ.get("CONVERGE_STORE") and bool(os.environ.get("KUBECONFIG"))


def make_client(store: str | None, kubeconfig: str | None = None, context: str | None = None) -> Client:
    """The one place a command's Client is built: a cluster's ManagedServices or the file
    store (./.converge by default)."""
    from converge.client import Client

    if uses_cluster(store, kubeconfig, context):
        return Client.cluster(kubeconfig, context, state_dir=os.environ.get("CONVERGE_STATE_DIR"))
    return Client.local(store)


def _error_exit(exc: Exception, code: int = 1) -> NoReturn:
    """Known errors as one line each; anything else propagates (a bug: show the traceback)."""
    from converge.client import NotStarted, WaitTimeout
    from converge.manifest import ManifestError
    from converge.names import InvalidName
    from converge.selector import SelectorError
    from converge.store import NotFound, StoreError

    if isinstance(exc, ManifestError):
        for p in exc.problems:
            click.echo(f"error: {p}", err=True)
        fail("nothing was applied", code)
    if isinstance(exc, NotFound):
        fail(f"managedservice {exc} not found", code)
    if isinstance(exc, StoreError | SelectorError | WaitTimeout | NotStarted | StoreChoiceError | InvalidName):
        fail(str(exc), code)
    raise exc


def handle_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as exc:  # known ones become one line and exit 1
            _error_exit(exc)
    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------- globals


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("urllib3", "docker", "kubernetes"):  # libraries' wire-level debug lines
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class Ctx:
    store_path: str | None = None
    namespace: str | None = None
    namespaces: list[str] = field(default_factory=list)  # every -n given (the operator watches them all)
    verbose: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = make_client(self.store_path, self.kubeconfig, self.context)
        return self._client

    @property
    def ns(self) -> str:
        if self.namespace:
            return self.namespace
        if uses_cluster(self.store_path, self.kubeconfig, self.context):
            return self.client.default_namespace  # the kubeconfig context's, as kubectl
        return "default"

    def key(self, name: str) -> ServiceKey:
        from converge.names import ServiceKey, check_name

        return ServiceKey(check_name(self.ns, "namespace"), check_name(name))  # a name is never a path

    @property
    def local_root(self) -> Path | None:
        """The file store's folder (as Client.local has it), or None for a cluster."""
        if uses_cluster(self.store_path, self.kubeconfig, self.context):
            return None
        from converge.storefiles import default_root

        return (Path(self.store_path) if self.store_path is not None else default_root()).absolute()


def _set_global(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False or value == ():
            return
        if attr == "namespace":
            value = tuple(value)
        # shared by every context: completion reads it (the namespace: the last -n)
        ctx.meta[f"converge.{attr}"] = value[-1] if attr == "namespace" else value
        if ctx.resilient_parsing:
            return
        obj = ctx.find_object(Ctx)
        if obj is None:
            obj = ctx.ensure_object(Ctx)
        if attr == "namespace":  # never a path into or out of the store
            from converge.names import InvalidName, check_name

            try:
                for ns in value:
                    check_name(ns, "namespace")
            except InvalidName as exc:
                raise click.BadParameter(str(exc), ctx, _param) from None
            obj.namespaces = [*obj.namespaces, *value]
            value = value[-1]  # a command's -n wins over the group's; the last one wins
        setattr(obj, attr, value)
        if attr == "verbose":
            _setup_logging(True)
    return callback


def global_options(envvars: bool) -> Callable[[F], F]:
    """The same flags on the group and on every subcommand (either position works)."""
    opts = [
        click.option("--store", default=None, metavar="DIR",
                     expose_value=False, is_eager=True, callback=_set_global("store_path"),
                     help="File store root (env CONVERGE_STORE, default ./.converge)."),
        click.option("-n", "--namespace", multiple=True, expose_value=False, is_eager=True,
                     callback=_set_global("namespace"),
                     help="Namespace (default: default; the operator: watch these, repeatable)."),
        click.option("-v", "--verbose", is_flag=True, default=None, expose_value=False, is_eager=True,
                     callback=_set_global("verbose"), help="Log every reconcile step."),
        click.option("--kubeconfig", default=None, metavar="FILE", expose_value=False, is_eager=True,
                     callback=_set_global("kubeconfig"),
                     help="Use the cluster's ManagedServices (default: $KUBECONFIG unless --store is given)."),
        click.option("--context", default=None, metavar="NAME", expose_value=False, is_eager=True,
                     callback=_set_global("context"), help="The kubeconfig context (with --kubeconfig)."),
    ]

    def deco(f: F) -> F:
        # A decorated function collects options last-first; a Command appends them.
        for o in opts if isinstance(f, click.Command) else reversed(opts):
            f = o(f)
        return f
    return deco


class Group(click.Group):
    """Every subcommand also takes the global flags."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        global_options(envvars=False)(cmd)
        super().add_command(cmd, name)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@global_options(envvars=True)
@click.version_option(package_name="converge")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """converge: keep services in the state their owners declared.

    Global flags work before or after the command.

    \b
    Shell completion (commands, flags, service names):
      bash: eval "$(_CONVERGE_COMPLETE=bash_source converge)"
      zsh:  eval "$(_CONVERGE_COMPLETE=zsh_source converge)"
      fish: _CONVERGE_COMPLETE=fish_source converge | source
    """
    obj = ctx.ensure_object(Ctx)
    _setup_logging(obj.verbose)


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


def _complete_names(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """Service names for shell completion (the store of the flags or CONVERGE_STORE)."""
    try:
        import os

        store = ctx.meta.get("converge.store_path") or os.environ.get("CONVERGE_STORE")
        namespace = ctx.meta.get("converge.namespace") or "default"
        from converge.filestore import FileStore

        items = FileStore(store).list(namespace).items
        return sorted(n for o in items if (n := o.metadata.name).startswith(incomplete))
    except Exception:  # completion never fails loudly
        return []


def names_argument(required: bool = False) -> Callable[[F], F]:
    return click.argument("names", nargs=-1, required=required, metavar="NAME..." if required else "[NAME]...",
                          shell_complete=_complete_names)


# ---------------------------------------------------------------------------- selecting


def _selected_keys(c: Ctx, names: tuple[str, ...], selector: str | None, all_: bool,
                   files: tuple[str, ...] | None = None) -> list[ServiceKey]:
    """Exactly one way of choosing: NAME..., -l, --all (or -f, where files is not None)."""
    ways = [bool(names), selector is not None, all_, bool(files)]
    choices = "NAME..., -l SELECTOR, --all" + (" or -f FILE" if files is not None else "")
    if sum(ways) != 1:
        raise click.UsageError(("give one of " if sum(ways) == 0 else "give only one of ") + choices)
    if names:
        return [c.key(n) for n in names]
    if files:
        return [o.key for o in c.client.load(*files, namespace=c.namespace)]
    from converge.selector import parse_selector

    return [o.key for o in c.client.store.list(c.ns, parse_selector(selector or "")).items]


def _report(outcomes: dict[Any, Outcome], verb: str) -> None:
    bad = [o for o in outcomes.values() if not o.settled]
    for o in sorted(outcomes.values(), key=lambda o: str(o.key)):
        if o.error:
            click.echo(f"error: {o.key}: {o.error}", err=True)
    for o in bad:
        click.echo(f"{o.key}: not converged: {o.state}" + (f": {o.message}" if o.message else ""), err=True)
    if bad or any(o.error for o in outcomes.values()):
        sys.exit(1)
    click.echo(f"{len(outcomes)} service(s) {verb}")


# ---------------------------------------------------------------------------- desired state


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change; write nothing.")
@pass_ctx
@handle_errors
def apply(c: Ctx, files: tuple[str, ...], dry_run: bool) -> None:
    """Record desired state from manifests (validated all before anything is written)."""
    objs = c.client.load_for_apply(*files, namespace=c.namespace)
    for r in c.client.apply(objs, dry_run=dry_run):
        click.echo(f"managedservice/{r.key.name} {r.action}")


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-")
@pass_ctx
def diff(c: Ctx, files: tuple[str, ...]) -> None:
    """What `apply -f` would change: a unified diff of labels and spec, live against the
    manifests. Exit 0: no differences; 1: differences; 2: an error (as `kubectl diff`)."""
    from converge.specdiff import diff_objects
    from converge.store import NotFound

    try:
        objs = c.client.load_for_apply(*files, namespace=c.namespace)
        out = []
        for o in objs:
            try:
                live: ManagedService | None = c.client.store.get(o.key)
            except NotFound:
                live = None
            out.append(diff_objects(live, o))
    except click.ClickException:
        raise
    except Exception as exc:
        _error_exit(exc, code=2)
    text = "".join(out)
    if text:
        click.echo(text, nl=False)
        sys.exit(1)


# ---------------------------------------------------------------------------- reading


def _parse_output(output: str | None) -> tuple[str | None, Any]:
    if output is None or output in ("wide", "yaml", "json", "name"):
        return output, None
    kind, _, arg = output.partition("=")
    if kind == "custom-columns" and arg:
        from converge.columns import BadColumns, parse_columns

        try:
            return "custom-columns", parse_columns(arg)
        except BadColumns as exc:
            raise click.BadParameter(str(exc), param_hint="'-o'") from None
    raise click.BadParameter(f"{output!r}: use one of {OUTPUTS}", param_hint="'-o'")


def _render(items: list[dict[str, Any]], fmt: str | None, columns: Any, single: bool, namespaces: bool,
            header: bool = True) -> str:
    """Objects as written (ManagedService.dump(), or a stored file's JSON) as `get` shows them."""
    from converge import printers

    if fmt in ("yaml", "json"):
        return printers.dump(items, fmt, single=single)
    if fmt == "name":
        return "\n".join(f"managedservice/{s['metadata']['name']}" for s in items)
    if fmt == "custom-columns":
        from converge.columns import render

        return render(columns, [printers.shown(s) for s in items], header=header)
    return printers.table(items, wide=fmt == "wide", namespaces=namespaces, header=header)


def _get_doc(c: Ctx, name: str) -> dict[str, Any]:
    """A service as written. The file store's objects are read without the API models
    (converge.storefiles): `get` needs no pydantic for what converge wrote itself."""
    key = c.key(name)
    root = c.local_root
    if root is None:
        return c.client.store.get(key).dump()
    from converge.storefiles import document, object_path

    return document(key, object_path(root, key))


def _list_docs(c: Ctx, namespace: str | None, sel: Any) -> tuple[list[dict[str, Any]], list[Exception]]:
    root = c.local_root
    if root is None:
        listed = c.client.store.list(namespace, sel)
        return [o.dump() for o in listed.items], list(listed.errors)
    from converge.storefiles import documents

    docs, errors = documents(root, namespace, lambda d: sel.matches(d["metadata"].get("labels") or {}))
    return docs, list(errors)


@cli.command()
@names_argument()
@click.option("-l", "--selector", default=None, help="Label selector, e.g. stack=demo,tier!=db")
@click.option("-o", "--output", default=None, metavar="FORMAT", help=f"One of {OUTPUTS}.")
@click.option("-A", "--all-namespaces", is_flag=True, help="List in every namespace.")
@click.option("-w", "--watch", is_flag=True, help="After listing, print each change as it happens (Ctrl-C ends).")
@pass_ctx
@handle_errors
def get(c: Ctx, names: tuple[str, ...], selector: str | None, output: str | None, all_namespaces: bool,
        watch: bool) -> None:
    """List services (or show the named ones). Names that do not exist are errors (exit 1);
    the others are still shown."""
    from converge.selector import parse_selector
    from converge.store import NotFound

    fmt, columns = _parse_output(output)
    sel = parse_selector(selector)
    missing: list[str] = []
    items: list[dict[str, Any]] = []
    if names:
        for n in dict.fromkeys(names):
            try:
                items.append(_get_doc(c, n))
            except NotFound:
                missing.append(n)
    else:
        items, errors = _list_docs(c, None if all_namespaces else c.ns, sel)
        for e in errors:
            click.echo(f"warning: {e}", err=True)
    if items:
        click.echo(_render(items, fmt, columns, single=len(names) == 1, namespaces=all_namespaces))
    elif not names and not watch and fmt not in ("yaml", "json", "name"):
        click.echo("No resources found." if all_namespaces else f"No resources found in {c.ns} namespace.",
                   err=True)
    elif not names and fmt in ("yaml", "json"):
        click.echo(_render(items, fmt, columns, single=False, namespaces=all_namespaces))
    for n in missing:
        click.echo(f'error: managedservices "{n}" not found', err=True)
    if watch:
        _watch(c, names, sel, all_namespaces, fmt, columns, header=not items)
    if missing:
        sys.exit(1)


def _watch(c: Ctx, names: tuple[str, ...], sel: Any, all_namespaces: bool, fmt: str | None, columns: Any,
           header: bool) -> None:
    """One line (or document) per change of a selected object, until Ctrl-C."""
    from converge.store import NotFound

    stop = threading.Event()
    wanted = set(names)
    try:
        for key in c.client.store.watch(stop):
            if (wanted and key.name not in wanted) or (not all_namespaces and key.namespace != c.ns):
                continue
            try:
                obj = c.client.store.get(key)
            except NotFound:
                if fmt in (None, "wide"):
                    click.echo(f"{key.name}   <deleted>" if not all_namespaces else f"{key}   <deleted>")
                continue
            if not wanted and not sel.matches(obj.metadata.labels):
                continue
            click.echo(_render([obj.dump()], fmt, columns, single=True, namespaces=all_namespaces, header=header))
            header = False
    except KeyboardInterrupt:
        stop.set()


@cli.command()
@names_argument(required=True)
@pass_ctx
@handle_errors
def describe(c: Ctx, names: tuple[str, ...]) -> None:
    """Spec, status, conditions, endpoint, backend details and the last error of services."""
    from converge import printers

    click.echo("\n\n".join(printers.describe(c.client.get(n, c.ns)) for n in names))


@cli.command()
@click.argument("name", shell_complete=_complete_names)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
@click.option("--tail", type=int, default=-1, show_default=True, help="Lines from the end; -1: all.")
@pass_ctx
@handle_errors
def logs(c: Ctx, name: str, follow: bool, tail: int) -> None:
    """Print a service's output."""
    try:
        for line in c.client.logs(name, c.ns, follow=follow, tail=None if tail < 0 else tail):
            click.echo(line)
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------------- deleting, waiting


@cli.command()
@names_argument()
@click.option("-l", "--selector", default=None, help="Delete the services matching a label selector.")
@click.option("--all", "all_", is_flag=True, help="Delete every service in the namespace.")
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE|DIR|-",
              help="Delete the services these manifests declare.")
@click.option("--ignore-not-found", is_flag=True, help="A name that does not exist is not an error.")
@click.option("--force", is_flag=True, help="Forget the service even if deprovisioning does not finish.")
@click.option("--timeout", default="60s", help="How long to wait for deprovisioning.")
@pass_ctx
@handle_errors
def delete(c: Ctx, names: tuple[str, ...], selector: str | None, all_: bool, files: tuple[str, ...],
           ignore_not_found: bool, force: bool, timeout: str) -> None:
    """Deprovision services, then forget them: NAME..., -l SELECTOR, --all or -f FILE|DIR.
    All are deleted together: dependents stop before what they depend on."""
    keys = _selected_keys(c, names, selector, all_, files)
    if not keys and not names:
        click.echo("No resources found", err=True)
        return
    outcomes, missing = c.client.delete_many(keys, force=force, timeout=parse_duration(timeout))
    failed = bool(missing) and not ignore_not_found
    for key in dict.fromkeys(keys):
        if key in missing:
            if not ignore_not_found:
                click.echo(f'error: managedservices "{key.name}" not found', err=True)
            continue
        o = outcomes[key]
        if o.gone:
            click.echo(f"managedservice/{key.name} deleted" + (f" ({o.message})" if force and o.message else ""))
        else:
            failed = True
            click.echo(f"error: managedservice/{key.name} not deleted: {o.state}: {o.message} "
                       "(retry, or --force to forget it anyway)", err=True)
    if failed:
        sys.exit(1)


def _wait_for(text: str) -> WaitFor:
    from converge.waiting import BadWaitFor, parse_wait_for

    try:
        return parse_wait_for(text)
    except BadWaitFor as exc:
        raise click.BadParameter(str(exc), param_hint="'--for'") from None


@cli.command()
@names_argument()
@click.option("-l", "--selector", default=None)
@click.option("--all", "all_", is_flag=True, help="Every service in the namespace.")
@click.option("--for", "for_", default="condition=Ready", show_default=True,
              help="condition=TYPE, condition=TYPE=true|false|unknown (case-insensitive), or delete.")
@click.option("--timeout", default="30s", show_default=True)
@pass_ctx
@handle_errors
def wait(c: Ctx, names: tuple[str, ...], selector: str | None, all_: bool, for_: str, timeout: str) -> None:
    """Wait until services meet a condition (or are deleted); exit 1 on timeout."""
    want = _wait_for(for_)  # a bad --for fails before anything is read
    t = parse_duration(timeout)
    keys = _selected_keys(c, names, selector, all_)
    if not keys:
        fail("no matching resources found")
    done = "deleted" if want.delete else "condition met"
    c.client.wait_all(dict.fromkeys(keys), want, timeout=t,
                      on_met=lambda key: click.echo(f"managedservice/{key.name} {done}"))


# ---------------------------------------------------------------------------- admin state


def _updown(c: Ctx, up: bool, names: tuple[str, ...], selector: str | None, force: bool, timeout: str,
            all_namespaces: bool) -> None:
    if not names and selector is None:
        raise click.UsageError("give service names or -l SELECTOR (-l '' for every service)")
    t = parse_duration(timeout)
    ns = None if all_namespaces and not names else c.ns
    if up:
        outcomes = c.client.up(selector, names, ns, timeout=t)
    else:
        outcomes = c.client.down(selector, names, ns, force=force, timeout=t)
    _report(outcomes, "up" if up else ("deprovisioned" if force else "suspended"))


@cli.command()
@names_argument()
@click.option("-l", "--selector", default=None)
@click.option("-A", "--all-namespaces", is_flag=True, help="Select in every namespace.")
@click.option("--timeout", default="60s")
@pass_ctx
@handle_errors
def up(c: Ctx, names: tuple[str, ...], selector: str | None, all_namespaces: bool, timeout: str) -> None:
    """Set adminState active (start or resume) and converge."""
    _updown(c, True, names, selector, False, timeout, all_namespaces)


@cli.command()
@names_argument()
@click.option("-l", "--selector", default=None)
@click.option("-A", "--all-namespaces", is_flag=True, help="Select in every namespace.")
@click.option("--force", is_flag=True,
              help="Deprovision (adminState inactive) instead of suspending; the objects stay in the "
                   "store (`converge delete` forgets them).")
@click.option("--timeout", default="60s")
@pass_ctx
@handle_errors
def down(c: Ctx, names: tuple[str, ...], selector: str | None, all_namespaces: bool, force: bool,
         timeout: str) -> None:
    """Suspend services (dependents first); --force deprovisions them. Either way the
    objects stay, so `up` brings them back; `delete` removes them."""
    _updown(c, False, names, selector, force, timeout, all_namespaces)


# ---------------------------------------------------------------------------- converging


@cli.command()
@click.option("--timeout", default="60s", help="Give up waiting for services to settle after this long.")
@pass_ctx
@handle_errors
def reconcile(c: Ctx, timeout: str) -> None:
    """One converging pass over every service, until all are settled."""
    _report(c.client.reconcile(timeout=parse_duration(timeout)), "converged")


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        logging.getLogger("converge").info("received %s, stopping (services keep running)",
                                           signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@cli.command()
@click.option("--workers", default=8, show_default=True)
@click.option("--resync", default="60s", show_default=True, help="Full re-observation interval.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0,
              help="Serve Prometheus metrics on this port (0: off).")
@pass_ctx
@handle_errors
def run(c: Ctx, workers: int, resync: str, metrics_port: int) -> None:
    """The continuous local controller: converges and self-heals until interrupted."""
    from converge.runtime import Runtime

    rt = Runtime(c.client.reconciler, workers=workers, resync=parse_duration(resync))
    if metrics_port:
        try:
            from converge.metrics import Metrics, serve_metrics
        except ImportError as exc:
            fail(f"--metrics-port needs prometheus-client ({exc}): pip install 'converge[metrics]'")

        metrics = Metrics(rt)
        rt.on_outcome = metrics.observe
        c.client.reconciler.on_transition = metrics.transition
        serve_metrics(metrics, metrics_port, addr="127.0.0.1")
    with _stop_on_signals() as stop:
        rt.run(stop)


_BACKENDS = ("daemon", "container", "terraform", "kubernetes")


@cli.command()
@click.option("--all-namespaces", "-A", "all_namespaces", is_flag=True,
              help="Watch every namespace (the default when no --namespace is given).")
@click.option("--enable-backend", "enable", multiple=True, type=click.Choice(_BACKENDS),
              help="Enable a backend (repeatable). kubernetes is on by default; daemon, container and "
                   "terraform run programs on the operator's host and are off unless enabled.")
@click.option("--disable-backend", "disable", multiple=True, type=click.Choice(_BACKENDS))
@click.option("--leader-elect", is_flag=True, help="Only the holder of a coordination.k8s.io Lease reconciles.")
@click.option("--lease-name", default="converge-operator", show_default=True)
@click.option("--lease-namespace", default=None, help="Default: the pod's namespace, else default.")
@click.option("--lease-duration", default="15s", show_default=True)
@click.option("--health-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="/healthz and /readyz (0: off).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9090, show_default=True,
              help="Prometheus /metrics (0: off).")
@click.option("--state-dir", default=None, metavar="DIR",
              help="Host-local files of daemon/terraform services (default $CONVERGE_STATE_DIR or /tmp/converge).")
@click.option("--workers", default=8, show_default=True)
@click.option("--resync", default="60s", show_default=True)
@pass_ctx
@handle_errors
def operator(c: Ctx, all_namespaces: bool, enable: tuple[str, ...],
             disable: tuple[str, ...], leader_elect: bool, lease_name: str, lease_namespace: str | None,
             lease_duration: str, health_port: int, metrics_port: int, state_dir: str | None, workers: int,
             resync: str) -> None:
    """The Kubernetes operator: converge the cluster's ManagedServices of the namespaces
    given with -n/--namespace (repeatable; needs only namespaced RBAC) or of all of them
    (--all-namespaces, the default), with in-cluster config or
    --kubeconfig/--context/$KUBECONFIG. SIGTERM stops it gracefully; services keep running."""
    from converge.operator import DEFAULT_BACKENDS, Options
    from converge.operator import run as run_operator

    watch_namespaces = tuple(c.namespaces)
    if all_namespaces and watch_namespaces:
        fail("--all-namespaces and --namespace exclude each other")
    enabled = (DEFAULT_BACKENDS | set(enable)) - set(disable)
    opts = Options(
        namespaces=tuple(dict.fromkeys(watch_namespaces)), enabled=frozenset(enabled), leader_elect=leader_elect,
        lease_name=lease_name, lease_namespace=lease_namespace, lease_seconds=parse_duration(lease_duration),
        health_port=health_port, metrics_port=metrics_port,
        state_dir=Path(state_dir or os.environ.get("CONVERGE_STATE_DIR") or "/tmp/converge"),  # noqa: S108
        workers=workers, resync=parse_duration(resync), kubeconfig=c.kubeconfig, context=c.context)
    sys.exit(run_operator(opts))


@cli.command()
def crds() -> None:
    """Print the CustomResourceDefinitions (YAML, for kubectl apply -f -)."""
    from converge.crd import crd_yaml

    click.echo(crd_yaml(), nl=False)


def main(argv: Iterable[str] | None = None) -> None:
    from converge.startup import skip_pydantic_plugins

    skip_pydantic_plugins()  # before the first model is built (api models build on first use)
    cli(args=None if argv is None else list(argv), prog_name="converge")


if __name__ == "__main__":
    main()
