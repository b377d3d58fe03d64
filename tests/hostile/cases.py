"""Invalid manifests a careless or hostile user writes: (YAML text, what the error must name).

Each is a small change to VALID; every one must be refused with exit code 1, an error
naming the file and the field (or line), and nothing written.
"""

from __future__ import annotations

VALID = """\
apiVersion: converge.dev/v1alpha1
kind: ManagedService
metadata:
  name: web
  labels: {stack: demo}
spec:
  dependsOn: []
  backend:
    daemon:
      command: [python3, -m, http.server, "$(PORT)"]
      env: {GREETING: hello}
  endpoint:
    port: 8080
    healthCheck: {http: {path: /healthz}, periodSeconds: 1}
  restartPolicy: {backoffSeconds: 1}
"""


def v(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


TF = """\
apiVersion: converge.dev/v1alpha1
kind: ManagedService
metadata: {name: tf}
spec:
  backend:
    terraform:
      directory: /nonexistent/recipe
      variables:
        {vars}
"""

CONTAINER = """\
apiVersion: converge.dev/v1alpha1
kind: ManagedService
metadata: {name: box}
spec:
  backend:
    container:
      {fields}
"""

def tf(variables: str) -> str:
    return TF.replace("{vars}", variables)


def container(fields: str) -> str:
    return CONTAINER.replace("{fields}", fields)


BOMB = "".join(
    [tf("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]")]
    + [f"        {c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
)

CASES: dict[str, tuple[str, str]] = {
    # names and the like: full match (a trailing newline is not a name)
    "name-newline": (v("name: web", 'name: "web\\n"'), "metadata.name"),
    "name-path": (v("name: web", 'name: "../../x"'), "metadata.name"),
    "namespace-dotdot": (v("name: web", "name: web\n  namespace: ../x"), "metadata.namespace"),
    "namespace-abs": (v("name: web", "name: web\n  namespace: /abs"), "metadata.namespace"),
    "namespace-newline": (v("name: web", 'name: web\n  namespace: "prod\\n"'), "metadata.namespace"),
    "label-key-newline": (v("{stack: demo}", '{"stack\\n": demo}'), "metadata.labels"),
    "label-value-newline": (v("{stack: demo}", '{stack: "demo\\n"}'), "metadata.labels.stack"),
    "label-key-long": (v("{stack: demo}", "{" + "k" * 64 + ": demo}"), "metadata.labels"),
    "depends-newline": (v("dependsOn: []", 'dependsOn: ["db\\n"]'), "spec.dependsOn[0]"),
    "env-name-newline": (v("{GREETING: hello}", '{"GREETING\\n": hello}'), "env[0].name"),
    "env-value-int": (v("{GREETING: hello}", "{GREETING: 8080}"), "spec.backend.daemon.env"),
    "env-value-nul": (v("{GREETING: hello}", '{GREETING: "a\\0b"}'), "env[0].value"),
    "valuefrom-env-newline": (v("{GREETING: hello}", '[{name: G, valueFrom: {env: "X\\n"}}]'),
                              "env[0].valueFrom.env"),
    # YAML structure
    "duplicate-key": (v("  labels:", "  name: other\n  labels:"), "duplicate key 'name'"),
    "duplicate-key-deep": (v("port: 8080", "port: 8080\n    port: 9090"), "line 14"),
    "nested-deep": (tf("deep: " + "[" * 1000 + "]" * 1000), "line 9"),
    "nested-deep-blocks": (tf("deep:\n" + "".join("  " * i + "          k:\n" for i in range(100))),
                           "nested more than 64"),
    "recursive-alias": (tf("loop: &x [*x]"), "recursive alias"),
    "recursive-alias-map": (tf("loop: &x {self: *x}"), "recursive alias"),
    "binary": (tf("blob: !!binary aGVsbG8="), "!!binary"),
    "set": (tf("s: !!set {a, b}"), "!!set"),
    "python-tag": (tf("p: !!python/object/apply:os.system [true]"), "not allowed"),
    "alias-bomb": (BOMB, "larger than 1048576 bytes"),
    "huge-int": (tf("n: " + "9" * 5000), "cannot read a value"),
    "not-yaml": (VALID + "  bad: [\n", "not valid YAML"),
    "empty": ("", "no objects found"),
    "lone-separator": ("---\n", "no objects found"),
    "only-comments": ("# nothing\n---\n# here\n", "no objects found"),
    "list-document": ("- a\n- b\n", "expected a mapping"),
    "complex-key": (v("  labels:", "  ? [a]\n  : b\n  labels:"), "mapping key must be a string"),
    # numbers: finite, bounded, strictly typed
    "period-inf": (v("periodSeconds: 1", "periodSeconds: .inf"), "healthCheck.periodSeconds"),
    "period-nan": (v("periodSeconds: 1", "periodSeconds: .nan"), "healthCheck.periodSeconds"),
    "period-tiny": (v("periodSeconds: 1", "periodSeconds: 1e-300"), "healthCheck.periodSeconds"),
    "period-string": (v("periodSeconds: 1", 'periodSeconds: "1"'), "healthCheck.periodSeconds"),
    "backoff-tiny": (v("backoffSeconds: 1", "backoffSeconds: 1e-300"), "restartPolicy.backoffSeconds"),
    "backoff-huge": (v("backoffSeconds: 1", "backoffSeconds: 1e300"), "restartPolicy.backoffSeconds"),
    "backoff-bool": (v("backoffSeconds: 1", "backoffSeconds: true"), "restartPolicy.backoffSeconds"),
    "reset-negative": (v("backoffSeconds: 1", "resetAfterSeconds: -1"), "restartPolicy.resetAfterSeconds"),
    "port-bool": (v("port: 8080", "port: true"), "endpoint.port"),
    "port-float": (v("port: 8080", "port: 8080.5"), "endpoint.port"),
    "port-zero": (v("port: 8080", "port: 0"), "endpoint.port"),
    "allocate-string": (v("port: 8080", 'port: 8080\n    allocatePort: "yes"'), "endpoint.allocatePort"),
    "threshold-float": (v("periodSeconds: 1}", "periodSeconds: 1, failureThreshold: 2.5}"),
                        "healthCheck.failureThreshold"),
    "threshold-huge": (v("periodSeconds: 1}", "periodSeconds: 1, failureThreshold: 1000000000}"),
                       "healthCheck.failureThreshold"),
    "status-code-string": (v("{path: /healthz}", '{path: /healthz, status: "200"}'), "http.status"),
    "probe-timeout-inf": (v("{path: /healthz}", "{path: /healthz, timeoutSeconds: .inf}"), "http.timeoutSeconds"),
    "startup-timeout-zero": (v("periodSeconds: 1}", "periodSeconds: 1, startupTimeoutSeconds: 0}"),
                             "healthCheck.startupTimeoutSeconds"),
    "grace-string": (v('"$(PORT)"]', '"$(PORT)"]\n      stopGracePeriodSeconds: "10"'),
                     "daemon.stopGracePeriodSeconds"),
    "grace-huge": (v('"$(PORT)"]', '"$(PORT)"]\n      stopGracePeriodSeconds: 1e9'), "daemon.stopGracePeriodSeconds"),
    "tf-timeout-inf": (tf("{}\n      timeoutSeconds: .inf"), "terraform.timeoutSeconds"),
    "tf-copy-string": (tf("{}\n      copy: 'no'"), "terraform.copy"),
    # strings that can never run
    "argv0-empty": (v('command: [python3, -m, http.server, "$(PORT)"]', 'command: ["", x]'), "daemon.command"),
    "argv-empty-list": (v('command: [python3, -m, http.server, "$(PORT)"]', "command: []"), "daemon.command"),
    "argv-nul": (v("http.server", '"http.ser\\0ver"'), "daemon.command[2]"),
    "argv-not-string": (v("http.server", "{a: b}"), "daemon.command[2]"),
    "workdir-nul": (v('"$(PORT)"]', '"$(PORT)"]\n      workingDir: "/tmp\\0x"'), "daemon.workingDir"),
    "workdir-nouser": (v('"$(PORT)"]', '"$(PORT)"]\n      workingDir: ~nosuchuser/x'), "daemon.workingDir"),
    "secret-file-nouser": (v("{GREETING: hello}", "[{name: G, valueFrom: {file: ~nosuchuser/x}}]"),
                           "env[0].valueFrom.file"),
    "http-path-crlf": (v("{path: /healthz}", '{path: "/x\\r\\nHost: evil"}'), "healthCheck.http.path"),
    "http-path-relative": (v("{path: /healthz}", "{path: healthz}"), "healthCheck.http.path"),
    "http-path-space": (v("{path: /healthz}", '{path: "/a b"}'), "healthCheck.http.path"),
    "host-newline": (v("port: 8080", 'port: 8080\n    host: "127.0.0.1\\nx"'), "endpoint.host"),
    "host-space": (v("port: 8080", 'port: 8080\n    host: "evil host"'), "endpoint.host"),
    "host-bad-ipv6": (v("port: 8080", 'port: 8080\n    host: "::1::2"'), "endpoint.host"),
    "image-upper": (container("image: Repo/Img:tag"), "container.image"),
    "image-space": (container("image: 'img:1 --privileged'"), "container.image"),
    "image-empty": (container("image: ''"), "container.image"),
    "image-option": (container("image: --help"), "container.image"),
    "memory-word": (container("image: img:1\n      resources: {memory: lots}"), "resources.memory"),
    "memory-tiny": (container("image: img:1\n      resources: {memory: 1k}"), "resources.memory"),
    "memory-negative": (container("image: img:1\n      resources: {memory: '-1g'}"),
                        "resources.memory"),
    "cpus-inf": (container("image: img:1\n      resources: {cpus: .inf}"), "resources.cpus"),
    "cpus-string": (container("image: img:1\n      resources: {cpus: '2'}"), "resources.cpus"),
    "container-path-relative": (container("image: img:1\n      volumes: [{hostPath: /a, "
                                                        "containerPath: data}]"), "volumes[0].containerPath"),
    "container-path-colon": (container("image: img:1\n      volumes: [{hostPath: /a, "
                                                     "containerPath: '/d:rw'}]"), "volumes[0].containerPath"),
    "host-path-colon": (container("image: img:1\n      volumes: [{hostPath: '/a:/b', "
                                                "containerPath: /d}]"), "volumes[0].hostPath"),
    "readonly-string": (container("image: img:1\n      volumes: [{hostPath: /a, "
                                                "containerPath: /d, readOnly: 'true'}]"), "volumes[0].readOnly"),
    "container-workdir-relative": (container("image: img:1\n      workingDir: app"),
                                   "container.workingDir"),
    "container-user-shell": (container("image: img:1\n      user: 'root; rm'"), "container.user"),
    "container-argv0-empty": (container("image: img:1\n      command: ['']"), "container.command"),
    "tf-variable-name": (tf('"bad name": 1'), "terraform.variables"),
    "tf-output-name": (tf("{}\n      outputs: ['a b']"), "terraform.outputs[0]"),
    "tf-loglevel": (tf("{}\n      logLevel: 'TRACE\\nX'"), "terraform.logLevel"),
    "tf-directory-nul": (tf("{}").replace("/nonexistent/recipe", '"/a\\0b"'), "terraform.directory"),
}
