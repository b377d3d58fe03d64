"""The terraform CLI as text: command lines in, output parsed out. Pure, no I/O.

Used by converge.backends.terraform (the Terraform backend) and its runner. Command lines are built
with python-terraform's option conventions (`IsFlagged`, lists repeat a flag), always
with the flags terraform/OpenTofu 1.x expect (`-input=false`, `-no-color`,
`-auto-approve`; never the removed `-force`). The parsers read what the CLI prints:
planned changes, `Error:` blocks, the local state's lock info, `output -json`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from python_terraform import IsFlagged, Terraform

SENSITIVE = "(sensitive)"
VARS_FILE = "converge.auto.tfvars.json"  # auto-loaded: values stay out of argv and `ps`

# Files of a source recipe that belong to a terraform run there, never to the recipe.
COPY_IGNORED = frozenset(
    {".terraform", "terraform.tfstate", "terraform.tfstate.backup", ".terraform.tfstate.lock.info",
     ".converge", VARS_FILE}
)


# --------------------------------------------------------------------------- command lines


def build_argv(binary: str, command: str, options: Mapping[str, Any], args: Sequence[str] = ()) -> list[str]:
    """argv of `binary command [options] [args]`, options in python-terraform's convention
    (`auto_approve=IsFlagged` -> `-auto-approve`, `var_file=[a, b]` -> two `-var-file=`,
    `input=False` -> `-input=false`, None is left out)."""
    # Not Terraform(...): its constructor reads a state file; building argv needs no I/O.
    tf = Terraform.__new__(Terraform)
    tf.terraform_bin_path = binary
    argv: list[str] = tf.generate_cmd_string(command, *args, **dict(options))
    return argv


_COMMON: dict[str, Any] = {"input": False, "no_color": IsFlagged}


def init_argv(binary: str) -> list[str]:
    return build_argv(binary, "init", _COMMON)


def plan_argv(binary: str, var_files: Sequence[str]) -> list[str]:
    """A read-only plan: refreshes in memory, takes no lock, writes nothing."""
    opts = {**_COMMON, "detailed_exitcode": IsFlagged, "refresh": True, "lock": False,
            "var_file": list(var_files)}
    return build_argv(binary, "plan", opts)


def apply_argv(binary: str, var_files: Sequence[str]) -> list[str]:
    return build_argv(binary, "apply", {**_COMMON, "auto_approve": IsFlagged, "var_file": list(var_files)})


def destroy_argv(binary: str, var_files: Sequence[str]) -> list[str]:
    return build_argv(binary, "destroy", {**_COMMON, "auto_approve": IsFlagged, "var_file": list(var_files)})


def output_argv(binary: str) -> list[str]:
    return build_argv(binary, "output", {"no_color": IsFlagged, "json": IsFlagged})


def tfvars_json(variables: Mapping[str, Any]) -> str:
    return json.dumps(dict(variables), indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------- plan output

_CHANGE = re.compile(r"^\s*# (?P<addr>\S+)(?: \(.*?\))? (?P<what>(?:is tainted, so (?:it )?)?(?:will|must) be .+)$")
_SUMMARY = re.compile(r"^Plan: \d+ to add, \d+ to change, \d+ to destroy\.$")


def plan_changes(text: str) -> list[str]:
    """The planned resource changes, e.g. 'terraform_data.file must be replaced'."""
    out: list[str] = []
    for line in text.splitlines():
        m = _CHANGE.match(line)
        if m:
            out.append(f"{m['addr']} {m['what']}")
    return out


def drift_message(text: str, limit: int = 5) -> str:
    """What a plan with changes (exit 2) would do, in one line (the core says it is drift)."""
    changes = plan_changes(text)
    summary = next((ln.strip() for ln in text.splitlines() if _SUMMARY.match(ln.strip())), "")
    if not changes:
        if "Changes to Outputs" in text:
            return "outputs would change"
        return "the plan has changes"
    shown = "; ".join(changes[:limit])
    more = f"; and {len(changes) - limit} more" if len(changes) > limit else ""
    return f"{shown}{more}" + (f" ({summary})" if summary else "")


# --------------------------------------------------------------------------- errors

_BOX = re.compile(r"^[│╷╵]\s?")
_BLOCK_START = re.compile(r"^(Error|Warning): ")


def error_excerpt(text: str, max_lines: int = 25, max_chars: int = 2000) -> str:
    """The `Error:` blocks of terraform's output, trimmed; else its last lines."""
    lines = [_BOX.sub("", ln.rstrip()) for ln in text.splitlines()]
    lines = [ln for ln in lines if ln not in ("╷", "╵")]
    picked: list[str] = []
    keep = False
    for ln in lines:
        m = _BLOCK_START.match(ln)
        if m:
            keep = m.group(1) == "Error"
        if keep:
            picked.append(ln)
    if not picked:
        picked = [ln for ln in lines if ln.strip()][-max_lines:]
    squeezed: list[str] = []
    for ln in picked:
        if ln.strip() or (squeezed and squeezed[-1].strip()):
            squeezed.append(ln)
    while squeezed and not squeezed[-1].strip():
        squeezed.pop()
    if len(squeezed) > max_lines:
        squeezed = [*squeezed[:max_lines], f"... ({len(squeezed) - max_lines} more lines)"]
    out = "\n".join(squeezed)
    return out if len(out) <= max_chars else out[: max_chars - 4] + " ..."


def is_lock_error(text: str) -> bool:
    return "Error acquiring the state lock" in text


_NEEDS_INIT = (
    "terraform init", "tofu init", "Module not installed", "Required plugins are not installed",
    "Inconsistent dependency lock file", "Backend initialization required",
)


def needs_init(text: str) -> bool:
    """Does a failed command ask for (re-)initialization of the working dir?"""
    return any(s in text for s in _NEEDS_INIT)


def secret_strings(value: Any) -> list[str]:
    """The string leaves of a variables object: what must never show in a message."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in secret_strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in secret_strings(v)]
    return []


def scrub_values(text: str, values: Iterable[str]) -> str:
    """Replace each value (3+ characters, longest first) with ***."""
    for v in sorted({v for v in values if len(v) >= 3}, key=len, reverse=True):
        text = text.replace(v, "***")
    return text


# --------------------------------------------------------------------------- lock, state, outputs


@dataclass(frozen=True)
class LockInfo:
    id: str
    operation: str
    who: str
    created: str

    def describe(self) -> str:
        op = self.operation.removeprefix("OperationType").lower() or "unknown operation"
        return f"lock {self.id} ({op} by {self.who or 'unknown'} since {self.created or 'unknown'})"


def parse_lock_info(text: str) -> LockInfo | None:
    """The `.terraform.tfstate.lock.info` JSON terraform writes next to a locked local state."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "ID" not in data:
        return None
    return LockInfo(
        id=str(data.get("ID", "")), operation=str(data.get("Operation", "")),
        who=str(data.get("Who", "")), created=str(data.get("Created", "")),
    )


def managed_resources(state: Mapping[str, Any]) -> list[str]:
    """Addresses of the managed resource instances in a (v4) state document."""
    out: list[str] = []
    for r in state.get("resources") or []:
        if r.get("mode") != "managed":
            continue
        base = f"{r['module']}.{r['type']}.{r['name']}" if r.get("module") else f"{r['type']}.{r['name']}"
        for inst in r.get("instances") or []:
            key = inst.get("index_key")
            suffix = "" if key is None else (f'["{key}"]' if isinstance(key, str) else f"[{key}]")
            out.append(base + suffix)
    return out


def parse_outputs(text: str) -> dict[str, Any]:
    """`terraform output -json`: name -> {value, type, sensitive}. Bad JSON -> {}."""
    try:
        data = json.loads(text.strip() or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def published_outputs(raw: Mapping[str, Any], wanted: Sequence[str]) -> dict[str, Any]:
    """Only the outputs the spec lists; a sensitive one shows as '(sensitive)', never its value."""
    out: dict[str, Any] = {}
    for name in wanted:
        item = raw.get(name)
        if not isinstance(item, Mapping):
            continue
        out[name] = SENSITIVE if item.get("sensitive") else item.get("value")
    return out


def endpoint_output(raw: Mapping[str, Any], name: str | None) -> str | None:
    """The endpoint URI from the named output (a sensitive or non-string one is not used)."""
    item = raw.get(name) if name else None
    if not isinstance(item, Mapping) or item.get("sensitive"):
        return None
    value = item.get("value")
    return value if isinstance(value, str) and value else None
