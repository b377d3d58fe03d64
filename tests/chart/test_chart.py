"""The Helm chart (charts/converge): lint, templates with several value sets, RBAC that
is exactly what the operator uses, the pod's hardening, and bad values rejected at install."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.chart.conftest import CHART, KUBE_VERSION, Render, by_kind, helm_env, one, template

Rule = tuple[str, str, str, tuple[str, ...]]  # (apiGroup, resource, verb, resourceNames)


def rules_of(role: dict[str, Any]) -> set[Rule]:
    out: set[Rule] = set()
    for r in role["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    out.add((g, res, v, tuple(r.get("resourceNames", ()))))
    return out


def expand(group: str, resource: str, verbs: str, names: tuple[str, ...] = ()) -> set[Rule]:
    return {(group, resource, v, names) for v in verbs.split()}


MSVC = (expand("converge.dev", "managedservices", "get list watch patch update")
        | expand("converge.dev", "managedservices/status", "get patch update")
        | expand("converge.dev", "managedservices/finalizers", "update")
        | expand("", "events", "create patch"))
KUBE_BACKEND = (expand("apps", "deployments", "get list watch create patch delete")
                | expand("", "services", "get list watch create patch delete")
                | expand("", "pods", "get list")
                | expand("", "pods/log", "get"))


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    c: dict[str, Any] = pod["containers"][0]
    return c


def test_lint(helm: str, tmp_path: Path) -> None:
    for extra in ([], ["--set", "watchNamespaces={a,b}", "--set", "leaderElection.enabled=true",
                       "--set", "replicaCount=2", "--set", "metrics.serviceMonitor.enabled=true"]):
        p = subprocess.run([helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *extra],
                           capture_output=True, text=True,
                           timeout=60, env=helm_env(tmp_path))
        assert p.returncode == 0, p.stdout + p.stderr


def test_default_values(render: Render) -> None:
    objs = render()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]
    # All namespaces, kubernetes backend only: exactly these rules, nothing else.
    assert rules_of(one(objs, "ClusterRole")) == MSVC | KUBE_BACKEND
    binding = one(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "converge", "namespace": "converge-system"}]
    assert binding["roleRef"]["name"] == "converge"

    dep = one(objs, "Deployment")
    assert dep["metadata"]["namespace"] == "converge-system"
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # never two operators without leader election
    c = container(objs)
    assert c["image"] == "converge/operator:0.1.0"
    assert c["command"] == ["converge", "operator"]
    assert c["args"] == ["--all-namespaces", "--enable-backend=kubernetes", "--health-port=8080",
                         "--metrics-port=9090", "--state-dir=/var/lib/converge"]


def test_pod_is_hardened(render: Render) -> None:
    objs = render()
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "converge"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(objs)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # The only writable places: emptyDirs for /tmp and the state dir.
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"/tmp", "/var/lib/converge"}
    assert all("emptyDir" in v for v in pod["volumes"])
    assert not any(k in pod for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_watched_namespaces_get_roles_not_cluster_roles(render: Render) -> None:
    objs = render({"watchNamespaces": ["team-a", "team-b"]})
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in by_kind(objs, "Role")}
    assert set(roles) == {"team-a", "team-b"}
    for role in roles.values():
        assert rules_of(role) == MSVC | KUBE_BACKEND
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(objs, "RoleBinding")}
    assert set(bindings) == {"team-a", "team-b"}
    for b in bindings.values():
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "converge"}
        assert b["subjects"][0]["namespace"] == "converge-system"
    args = container(objs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_no_kubernetes_backend_no_workload_rights(render: Render) -> None:
    objs = render({"backends": {"enabled": ["daemon", "terraform"]}})
    assert rules_of(one(objs, "ClusterRole")) == MSVC
    args = container(objs)["args"]
    assert [a for a in args if a.startswith(("--enable-backend", "--disable-backend"))] == [
        "--enable-backend=daemon", "--enable-backend=terraform", "--disable-backend=kubernetes"]


def test_secrets_only_by_name(render: Render) -> None:
    assert not any(r[1] == "secrets" for r in rules_of(one(render(), "ClusterRole")))
    objs = render({"secretNames": ["db-password", "api-token"], "watchNamespaces": ["apps"]})
    secret_rules = {r for r in rules_of(one(objs, "Role")) if r[1] == "secrets"}
    assert secret_rules == {("", "secrets", "get", ("db-password", "api-token"))}


def test_no_wildcards_anywhere(render: Render) -> None:
    values: dict[str, Any] = {"backends": {"enabled": ["kubernetes", "daemon", "container", "terraform"]},
                              "secretNames": ["x"], "leaderElection": {"enabled": True}, "replicaCount": 2}
    for objs in (render(values), render({**values, "watchNamespaces": ["a"]})):
        for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
            for group, resource, verb, _ in rules_of(role):
                assert "*" not in (group, resource, verb), role["metadata"]["name"]
                assert verb not in ("escalate", "bind", "impersonate", "deletecollection")
                assert resource not in ("pods/exec", "pods/attach", "nodes", "clusterroles", "roles",
                                        "customresourcedefinitions", "serviceaccounts/token")


def test_leader_election(render: Render) -> None:
    objs = render({"replicaCount": 3, "leaderElection": {"enabled": True}, "watchNamespaces": ["apps"]})
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    args = container(objs)["args"]
    assert {"--leader-elect", "--lease-name=converge", "--lease-namespace=converge-system"} <= set(args)
    lease_role = next(r for r in by_kind(objs, "Role") if r["metadata"]["name"] == "converge-leader-election")
    assert lease_role["metadata"]["namespace"] == "converge-system"
    assert rules_of(lease_role) == (expand("coordination.k8s.io", "leases", "create")
                                    | expand("coordination.k8s.io", "leases", "get update patch", ("converge",))
                                    | expand("", "events", "create patch"))
    # Without leader election there is no lease right at all.
    assert not any(r[1] == "leases" for role in by_kind(render(), "ClusterRole") for r in rules_of(role))


def test_metrics_service_and_service_monitor(render: Render) -> None:
    assert not by_kind(render(), "Service")
    objs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    svc = one(objs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    sm = one(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()


def test_image_digest_and_release_name(render: Render) -> None:
    digest = "sha256:" + "a" * 64
    objs = render({"image": {"repository": "registry.local:5000/converge/operator", "digest": digest}},
                  release="ops", namespace="ops-ns")
    assert container(objs)["image"] == f"registry.local:5000/converge/operator@{digest}"
    assert one(objs, "Deployment")["metadata"]["name"] == "ops-converge"
    assert one(objs, "ServiceAccount")["metadata"]["namespace"] == "ops-ns"


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicaCount": 2}, "leaderElection"),
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "enabled"),
    ({"replicaCount": -1}, "replicaCount"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
    ({"watchNamespaces": ["a", "a"]}, "watchNamespaces"),
    ({"backends": {"enabled": ["kubernetes", "shell"]}}, "backends"),
    ({"secretNames": ["*"]}, "secretNames"),
    ({"healthPort": 0}, "healthPort"),
    ({"metrics": {"port": 70000}}, "port"),
    ({"image": {"repository": "converge/operator", "tag": "latest; rm -rf /"}}, "tag"),
    ({"image": {"repository": "converge/operator", "digest": "sha256:short"}}, "digest"),
    ({"image": {"repository": "converge/operator", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"runAsUser": 0}, "runAsUser"),
    ({"stateDir": "relative/dir"}, "stateDir"),
    ({"stateDir": "/var/../etc"}, "stateDir"),
    ({"extraArgs": ["; sh"]}, "extraArgs"),
    ({"rbac": {"create": True, "rules": []}}, "rules"),
    ({"replicas": 3}, "replicas"),
    ({"healthPort": 9090}, "healthPort and metrics.port must differ"),
]


@pytest.mark.parametrize(("values", "needle"), BAD_VALUES, ids=[str(v) for v, _ in BAD_VALUES])
def test_bad_values_fail_at_install(helm: str, tmp_path: Path, values: dict[str, Any], needle: str) -> None:
    p = template(helm, tmp_path, values)
    assert p.returncode != 0, f"helm accepted {values}:\n{p.stdout[:500]}"
    assert needle in p.stderr, p.stderr
    assert p.stdout == ""  # nothing rendered


def test_every_flag_the_chart_passes_is_one_of_converge_operator(render: Render) -> None:
    import sys

    p = subprocess.run([str(Path(sys.executable).parent / "converge"), "operator", "--help"], capture_output=True,
                       text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip("no `converge operator` yet")
    objs = render({"watchNamespaces": ["a"], "leaderElection": {"enabled": True}, "replicaCount": 2,
                   "backends": {"enabled": ["daemon"]}})
    flags = {a.split("=", 1)[0] for o in (objs, render()) for a in container(o)["args"]}
    assert flags, "no flags rendered"
    for flag in flags:
        assert flag in p.stdout, f"converge operator has no {flag}"
