"""The pure parts of the Terraform backend (converge.backends.terraform_cli): command lines, plan
output, error excerpts, lock info, state and outputs. No terraform, no I/O."""

from __future__ import annotations

import json

import pytest

from converge.backends import terraform_cli as cli

# --------------------------------------------------------------------------- command lines


def test_apply_argv_uses_terraform_1x_flags() -> None:
    argv = cli.apply_argv("/bin/terraform", ["/v/a.tfvars", "/v/b.tfvars.json"])
    assert argv == ["/bin/terraform", "apply", "-input=false", "-no-color", "-auto-approve",
                    "-var-file=/v/a.tfvars", "-var-file=/v/b.tfvars.json"]
    assert "-force" not in argv


def test_destroy_argv_auto_approves_never_force() -> None:
    assert cli.destroy_argv("tofu", []) == ["tofu", "destroy", "-input=false", "-no-color", "-auto-approve"]


def test_plan_argv_is_read_only_with_detailed_exit_code() -> None:
    assert cli.plan_argv("terraform", ["x.tfvars"]) == [
        "terraform", "plan", "-input=false", "-no-color", "-detailed-exitcode", "-refresh=true",
        "-lock=false", "-var-file=x.tfvars",
    ]


def test_init_and_output_argv() -> None:
    assert cli.init_argv("terraform") == ["terraform", "init", "-input=false", "-no-color"]
    assert cli.output_argv("terraform") == ["terraform", "output", "-no-color", "-json"]


def test_variables_never_go_to_argv() -> None:
    assert not [a for a in cli.apply_argv("t", []) if a.startswith("-var=")]
    assert json.loads(cli.tfvars_json({"b": [1, 2], "a": {"k": "v"}})) == {"a": {"k": "v"}, "b": [1, 2]}


# --------------------------------------------------------------------------- plan output

PLAN_DRIFT = """\
terraform_data.file: Refreshing state... [id=2822810f]

Terraform used the selected providers to generate the following execution
plan. Resource actions are indicated with the following symbols:
-/+ destroy and then create replacement

Terraform will perform the following actions:

  # terraform_data.file must be replaced
-/+ resource "terraform_data" "file" {
      ~ triggers_replace = "present" -> (known after apply) # forces replacement
    }

  # terraform_data.other will be updated in-place
  # terraform_data.tainted is tainted, so must be replaced
  # module.app.terraform_data.x["a"] will be created
  # terraform_data.gone will be destroyed
  # (because terraform_data.gone is not in configuration)

Plan: 2 to add, 1 to change, 2 to destroy.
"""


def test_plan_changes_lists_each_planned_action() -> None:
    assert cli.plan_changes(PLAN_DRIFT) == [
        "terraform_data.file must be replaced",
        "terraform_data.other will be updated in-place",
        "terraform_data.tainted is tainted, so must be replaced",
        'module.app.terraform_data.x["a"] will be created',
        "terraform_data.gone will be destroyed",
    ]


def test_plan_changes_reads_opentofu_wording() -> None:
    text = "OpenTofu will perform the following actions:\n\n  # terraform_data.x is tainted, so it must be replaced\n"
    assert cli.plan_changes(text) == ["terraform_data.x is tainted, so it must be replaced"]


def test_drift_message_names_resources_and_summary() -> None:
    msg = cli.drift_message(PLAN_DRIFT, limit=2)
    assert msg == ("terraform_data.file must be replaced; terraform_data.other will be updated "
                   "in-place; and 3 more (Plan: 2 to add, 1 to change, 2 to destroy.)")


@pytest.mark.parametrize(("text", "msg"), [
    ("Changes to Outputs:\n  ~ greeting = \"a\" -> \"b\"\n", "outputs would change"),
    ("something else\n", "the plan has changes"),
])
def test_drift_message_without_resource_changes(text: str, msg: str) -> None:
    assert cli.drift_message(text) == msg


# --------------------------------------------------------------------------- errors

APPLY_FAILED = """\
Terraform will perform the following actions:
  # terraform_data.x will be created
terraform_data.x (local-exec): failing now

Warning: Deprecated flag: -state

Use `path` attribute within the `local` backend instead.

Error: local-exec provisioner error

  with terraform_data.x,
  on main.tf line 6, in resource "terraform_data" "x":
   6:   provisioner "local-exec" { command = "exit 3" }



Error running command 'exit 3': exit status 3. Output: failing now
"""


def test_error_excerpt_keeps_only_error_blocks() -> None:
    assert cli.error_excerpt(APPLY_FAILED) == (
        "Error: local-exec provisioner error\n\n"
        "  with terraform_data.x,\n"
        '  on main.tf line 6, in resource "terraform_data" "x":\n'
        '   6:   provisioner "local-exec" { command = "exit 3" }\n\n'
        "Error running command 'exit 3': exit status 3. Output: failing now"
    )


def test_error_excerpt_strips_box_drawing() -> None:
    boxed = "╷\n│ Error: Invalid expression\n│ \n│   on main.tf line 2:\n╵\n"
    assert cli.error_excerpt(boxed) == "Error: Invalid expression\n\n  on main.tf line 2:"


def test_error_excerpt_is_trimmed() -> None:
    text = "Error: big\n" + "\n".join(f"line {i}" for i in range(100))
    out = cli.error_excerpt(text, max_lines=5)
    assert out.splitlines() == ["Error: big", "line 0", "line 1", "line 2", "line 3", "... (96 more lines)"]
    assert len(cli.error_excerpt("Error: " + "x" * 5000, max_chars=100)) == 100


def test_error_excerpt_falls_back_to_last_lines() -> None:
    text = "\n".join(f"l{i}" for i in range(40)) + "\n\n"
    assert cli.error_excerpt(text, max_lines=3) == "l37\nl38\nl39"


def test_error_classification() -> None:
    assert cli.is_lock_error("Error: Error acquiring the state lock\n\nLock Info:\n")
    assert not cli.is_lock_error(APPLY_FAILED)
    assert cli.needs_init('Error: Module not installed\n\nRun "terraform init" to install.')
    assert not cli.needs_init(APPLY_FAILED)


def test_values_of_variables_are_scrubbed() -> None:
    secrets = cli.secret_strings({"pw": "hunter22", "n": 5, "list": ["abc", {"deep": "d33p"}], "ok": True})
    assert sorted(secrets) == ["abc", "d33p", "hunter22"]
    assert cli.scrub_values("login hunter22 with abc", [*secrets, "x"]) == "login *** with ***"


# --------------------------------------------------------------------------- lock, state, outputs


def test_parse_lock_info() -> None:
    info = cli.parse_lock_info(json.dumps({
        "ID": "e9b585e3", "Operation": "OperationTypeApply", "Info": "", "Who": "root@vm",
        "Version": "1.11.4", "Created": "2026-11-22T01:14:59Z", "Path": "terraform.tfstate",
    }))
    assert info == cli.LockInfo("e9b585e3", "OperationTypeApply", "root@vm", "2026-11-22T01:14:59Z")
    assert info.describe() == "lock e9b585e3 (apply by root@vm since 2026-11-22T01:14:59Z)"
    assert cli.parse_lock_info("") is None
    assert cli.parse_lock_info("[1]") is None


def test_managed_resources_of_a_state() -> None:
    state = {"resources": [
        {"mode": "managed", "type": "terraform_data", "name": "a", "instances": [{}]},
        {"mode": "data", "type": "terraform_remote_state", "name": "r", "instances": [{}]},
        {"mode": "managed", "type": "terraform_data", "name": "n", "module": "module.m",
         "instances": [{"index_key": 0}, {"index_key": "k"}]},
        {"mode": "managed", "type": "terraform_data", "name": "empty", "instances": []},
    ]}
    assert cli.managed_resources(state) == [
        "terraform_data.a", "module.m.terraform_data.n[0]", 'module.m.terraform_data.n["k"]',
    ]
    assert cli.managed_resources({}) == []


RAW_OUTPUTS = json.dumps({
    "greeting": {"sensitive": False, "type": "string", "value": "hi"},
    "token": {"sensitive": True, "type": "string", "value": "s3cr3t"},
    "url": {"sensitive": False, "type": "string", "value": "http://127.0.0.1:8080"},
    "secret_url": {"sensitive": True, "type": "string", "value": "http://user:pw@host"},
    "n": {"sensitive": False, "type": "number", "value": 3},
})


def test_published_outputs_only_listed_and_sensitive_hidden() -> None:
    raw = cli.parse_outputs(RAW_OUTPUTS)
    out = cli.published_outputs(raw, ["greeting", "token", "n", "absent"])
    assert out == {"greeting": "hi", "token": "(sensitive)", "n": 3}
    assert "s3cr3t" not in json.dumps(out)


def test_endpoint_output() -> None:
    raw = cli.parse_outputs(RAW_OUTPUTS)
    assert cli.endpoint_output(raw, "url") == "http://127.0.0.1:8080"
    assert cli.endpoint_output(raw, "secret_url") is None
    assert cli.endpoint_output(raw, "n") is None
    assert cli.endpoint_output(raw, None) is None


def test_parse_outputs_tolerates_garbage() -> None:
    assert cli.parse_outputs("") == {}
    assert cli.parse_outputs("not json") == {}
    assert cli.parse_outputs("[]") == {}
