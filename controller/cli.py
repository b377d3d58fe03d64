"""The `converge` command line: kubectl-shaped, a thin layer over converge.client.

Exit codes: 0 success; 1 the command failed (invalid manifest, not found, timed out,
not converged); 2 bad usage. Errors go to stderr, one per line, naming file, object and
field; nothing is written when any input is invalid.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from converge import printers
from converge.client import Client, WaitTimeout
from converge.manifest import ManifestError
from converge.reconciler import Outcome
from converge.selector import SelectorError, parse_selector
from converge.store import Conflict, NotFound, StoreError

F = TypeVar("F", bound=Callable[..., Any])
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 30s, 2m, 1h)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def handle_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ManifestError as exc:
            for p in exc.problems:
                click.echo(f"error: {p}", err=True)
            click.echo("error: nothing was applied", err=True)
            sys.exit(1)
        except NotFound as exc:
            fail(f"managedservice {exc} not found")
        except (Conflict, StoreError, SelectorError, WaitTimeout) as exc:
            fail(str(exc))
    return wrapper  # type: ignore[return-value]


class Ctx:
    def __init__(self, store: str | None, namespace: str | None) -> None:
        self.store_path = store
        self.namespace = namespace
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client.local(self.store_path)
        return self._client

    @property
    def ns(self) -> str:
        return self.namespace or "default"


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", envvar="CONVERGE_STORE", default=None, metavar="DIR",
              help="File store root (env CONVERGE_STORE, default ./.converge).")
@click.option("-n", "--namespace", default=None, help="Namespace (default: default).")
@click.option("-v", "--verbose", is_flag=True, help="Log every reconcile step.")
@click.version_option(package_name="converge")
@click.pass_context
def cli(ctx: click.Context, store: str | None, namespace: str | None, verbose: bool) -> None:
    """converge: keep services in the state their owners declared."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("urllib3", "docker", "kubernetes"):  # libraries' wire-level debug lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = Ctx(store, namespace)


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


@cli.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-")
@click.option("--dry-run", is_flag=True, help="Validate and show what would change; write nothing.")
@pass_ctx
@handle_errors
def apply(c: Ctx, files: tuple[str, ...], dry_run: bool) -> None:
    """Record desired state from manifests (validated all before anything is written)."""
    objs = c.client.load_for_apply(*files)
    if c.namespace:
        for o in objs:
            o.metadata.namespace = c.namespace
    for r in c.client.apply(objs, dry_run=dry_run):
        click.echo(f"managedservice/{r.key.name} {r.action}")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("-l", "--selector", default=None, help="Label selector, e.g. stack=demo,tier!=db")
@click.option("-o", "--output", type=click.Choice(["wide", "yaml", "json", "name"]), default=None)
@click.option("-A", "--all-namespaces", is_flag=True)
@pass_ctx
@handle_errors
def get(c: Ctx, names: tuple[str, ...], selector: str | None, output: str | None, all_namespaces: bool) -> None:
    """List services (or show the named ones)."""
    if names:
        items = [c.client.get(n, c.ns) for n in names]
        errors = []
    else:
        listed = c.client.store.list(None if all_namespaces else c.ns, parse_selector(selector))
        items, errors = listed.items, listed.errors
    for e in errors:
        click.echo(f"warning: {e}", err=True)
    if output in ("yaml", "json"):
        click.echo(printers.dump(items, output, single=len(names) == 1))
    elif output == "name":
        for s in items:
            click.echo(f"managedservice/{s.metadata.name}")
    elif not items:
        click.echo(f"No resources found in {c.ns} namespace." if not all_namespaces else "No resources found.",
                   err=True)
    else:
        click.echo(printers.table(items, wide=output == "wide", namespaces=all_namespaces))


@cli.command()
@click.argument("name")
@pass_ctx
@handle_errors
def describe(c: Ctx, name: str) -> None:
    """Spec, status, conditions, endpoint, backend details and the last error of a service."""
    click.echo(printers.describe(c.client.get(name, c.ns)))


@cli.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Forget the service even if deprovisioning does not finish.")
@click.option("--timeout", default="60s", help="How long to wait for deprovisioning.")
@pass_ctx
@handle_errors
def delete(c: Ctx, names: tuple[str, ...], force: bool, timeout: str) -> None:
    """Deprovision services, then forget them."""
    failed = False
    for name in names:
        o = c.client.delete(name, c.ns, force=force, timeout=parse_duration(timeout))
        if o.gone:
            click.echo(f"managedservice/{name} deleted" + (f" ({o.message})" if force and o.message else ""))
        else:
            failed = True
            click.echo(f"error: managedservice/{name} not deleted: {o.state}: {o.message} "
                       "(retry, or --force to forget it anyway)", err=True)
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True)
@click.option("--tail", type=int, default=None, help="Lines from the end (default: all).")
@pass_ctx
@handle_errors
def logs(c: Ctx, name: str, follow: bool, tail: int | None) -> None:
    """Print a service's output."""
    try:
        for line in c.client.logs(name, c.ns, follow=follow, tail=tail):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("name")
@click.option("--for", "for_", default="condition=Ready", help="condition=TYPE, or delete.")
@click.option("--timeout", default="30s")
@pass_ctx
@handle_errors
def wait(c: Ctx, name: str, for_: str, timeout: str) -> None:
    """Wait until a service's condition is True (e.g. --for condition=Ready)."""
    cond = for_.split("=", 1)[1] if for_.startswith("condition=") else for_
    if not cond:
        raise click.BadParameter("use --for condition=TYPE or --for delete")
    c.client.wait(name, c.ns, condition=cond, timeout=parse_duration(timeout))
    click.echo(f"managedservice/{name} condition met")


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
@click.argument("names", nargs=-1)
@click.option("-l", "--selector", default=None)
@click.option("-A", "--all-namespaces", is_flag=True, help="Select in every namespace.")
@click.option("--timeout", default="60s")
@pass_ctx
@handle_errors
def up(c: Ctx, names: tuple[str, ...], selector: str | None, all_namespaces: bool, timeout: str) -> None:
    """Set adminState active (start or resume) and converge."""
    _updown(c, True, names, selector, False, timeout, all_namespaces)


@cli.command()
@click.argument("names", nargs=-1)
@click.option("-l", "--selector", default=None)
@click.option("-A", "--all-namespaces", is_flag=True, help="Select in every namespace.")
@click.option("--force", is_flag=True, help="Deprovision (adminState inactive) instead of suspending.")
@click.option("--timeout", default="60s")
@pass_ctx
@handle_errors
def down(c: Ctx, names: tuple[str, ...], selector: str | None, all_namespaces: bool, force: bool,
         timeout: str) -> None:
    """Suspend services (dependents first); --force deprovisions them."""
    _updown(c, False, names, selector, force, timeout, all_namespaces)


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
@pass_ctx
@handle_errors
def run(c: Ctx, workers: int, resync: str) -> None:
    """The continuous local controller: converges and self-heals until interrupted."""
    from converge.runtime import Runtime

    rt = Runtime(c.client.reconciler, workers=workers, resync=parse_duration(resync))
    with _stop_on_signals() as stop:
        rt.run(stop)


@cli.command()
def crds() -> None:
    """Print the CustomResourceDefinitions (YAML, for kubectl apply -f -)."""
    from converge.crd import crd_yaml

    click.echo(crd_yaml(), nl=False)


def main() -> None:
    cli(prog_name="converge")


if __name__ == "__main__":
    main()
