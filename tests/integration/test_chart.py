"""The Helm chart (charts/airun), checked with the real tools: helm built from tools/helm, and the API server.

What a dry run cannot prove is checked otherwise: the chart's RBAC is applied for real (under names of its own,
so the session's roles stay untouched) and asked with `kubectl auth can-i`; the webhooks are compared with what
kopf builds for the operator's own handlers. The local control plane has neither the Prometheus Operator nor
cert-manager: third_party_crds.yaml holds subsets of their CRDs (the fields the chart uses), created only where
the kinds are absent.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from click.testing import CliRunner

from tests.gotools import tool
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "airun"
RELEASE = "airun"
# helm built by `go install` does not know a cluster version (it would assume v1.20); render for the local one.
KUBE_VERSION = "1.34.4"

MONITORING = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager": {"certManager": {"enabled": True}},
    "cert-manager-cluster-issuer": {
        "certManager": {"enabled": True, "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}
    },
    "postgresql": {"audit": {"store": "postgresql", "postgresql": {"existingSecret": "airun-audit-db"}}},
    "sqlite-emptydir": {"audit": {"sqlite": {"persistence": {"enabled": False}}}},
    "workspaces-emptydir": {"workspaces": {"persistence": {"enabled": False}}},
    "monitoring": MONITORING,
    "everything": {
        **MONITORING,
        "certManager": {"enabled": True},
        "audit": {"store": "postgresql", "postgresql": {"existingSecret": "db", "key": "dsn"}},
        "workspaces": {"persistence": {"existingClaim": "workspaces"}},
        "snapshots": {"existingSecret": "snapshot-key"},
        "notify": {"existingSecret": "notify-key"},
        "egress": {"forbidden": ["10.0.0.1:2379"]},
    },
}


@pytest.fixture(scope="module")
def helm() -> Path:
    return tool("helm", "helm")


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False, timeout=120)


def _template(
    helm: Path, values_file: Path, namespace: str, *extra: str, release: str = RELEASE
) -> subprocess.CompletedProcess[str]:
    return _helm(helm, "template", release, str(CHART), "--namespace", namespace, "-f", str(values_file), *extra)


def render(
    helm: Path, tmp_path: Path, values: dict[str, Any], namespace: str = "airun-system", release: str = RELEASE
) -> str:
    values_file = _values_file(tmp_path, values)
    result = _template(helm, values_file, namespace, "--kube-version", KUBE_VERSION, "--include-crds", release=release)
    assert result.returncode == 0, result.stderr
    return result.stdout


def objects(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} rendered"
    return found[0]


@pytest.fixture(scope="module")
def third_party_crds(kube: Kube) -> None:
    for crd in yaml.safe_load_all((Path(__file__).with_name("third_party_crds.yaml")).read_text()):
        result = kube.run("create", "-f", "-", stdin=yaml.safe_dump(crd), check=False)
        assert result.returncode == 0 or "AlreadyExists" in result.stderr, result.stderr
        kube.run("wait", "--for=condition=Established", "--timeout=30s", f"crd/{crd['metadata']['name']}")


# --- helm lint, and the server-side dry run -----------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_passes(helm: Path, tmp_path: Path, values: dict[str, Any]) -> None:
    result = _helm(
        helm, "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, "-f", str(_values_file(tmp_path, values))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_api_server_accepts_the_rendered_chart(
    helm: Path, kube: Kube, namespace: str, tmp_path: Path, third_party_crds: None, values: dict[str, Any]
) -> None:
    # The restricted Pod Security Standard, checked by the API server's PodSecurity admission: in `warn` mode
    # it judges the pod templates of Deployments too.
    kube.run("label", "namespace", namespace, "pod-security.kubernetes.io/warn=restricted")
    # Another release name: the local operator's own (kopf-managed) webhook configurations are airun.aifirst.dev,
    # and applying over them would merge a service into their url client config.
    manifest = render(helm, tmp_path, values, namespace, release="airun-chart")
    result = kube.run("apply", "--dry-run=server", "-f", "-", stdin=manifest, check=False)
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr, result.stderr
    applied = result.stdout
    for doc in objects(manifest):
        assert f"{doc['kind'].lower()}.{_group(doc)}/{doc['metadata']['name']}".replace("./", "/") in applied, doc

    # The control: the same check does warn about a Deployment that breaks the standard.
    deployment = find(objects(manifest), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    weakened = kube.run("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(deployment))
    assert "would violate PodSecurity" in weakened.stderr and "allowPrivilegeEscalation" in weakened.stderr


def test_the_third_party_crds_refuse_misspelt_fields(
    helm: Path, kube: Kube, namespace: str, tmp_path: Path, third_party_crds: None
) -> None:
    # The control for the dry run of monitoring and cert-manager objects: it is not a rubber stamp.
    docs = objects(render(helm, tmp_path, {**MONITORING, "certManager": {"enabled": True}}, namespace))
    monitor, rule, certificate = (
        find(docs, "ServiceMonitor"),
        find(docs, "PrometheusRule"),
        find(docs, "Certificate", f"{RELEASE}-webhook"),
    )
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    rule["spec"]["groups"] = [{"name": "g", "rules": [{"alert": "A", "for": "soon", "expr": "up == 0"}]}]
    del certificate["spec"]["secretName"]
    for doc, error in (
        (monitor, 'unknown field "spec.endpoints[0].intervall"'),
        (rule, "spec.groups[0].rules[0].for: Invalid value"),
        (certificate, "spec.secretName: Required value"),
    ):
        result = kube.run("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(doc), check=False)
        assert result.returncode != 0 and error in result.stderr, result.stderr


def _group(doc: dict[str, Any]) -> str:
    api_version: str = doc["apiVersion"]
    return api_version.rpartition("/")[0]


# --- values.schema.json ----------------------------------------------------------------------------------------

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown key": ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    "unknown nested key": ({"audit": {"sqlite": {"path": "/x"}}}, "additional properties 'path' not allowed"),
    "audit store": ({"audit": {"store": "mysql"}}, "/audit/store"),
    "negative replicas": ({"replicaCount": -1}, "/replicaCount"),
    "too many shards": ({"sharding": {"shards": 1000}}, "/sharding/shards"),
    "lease of no time": ({"sharding": {"leaseSeconds": 0}}, "/sharding/leaseSeconds"),
    "postgresql without its secret": ({"audit": {"store": "postgresql"}}, "/audit/postgresql/existingSecret"),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "port": ({"operator": {"ports": {"webhook": 70000}}}, "/operator/ports/webhook"),
    "scrape interval": ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "/metrics/serviceMonitor/interval"),
    "privilege escalation": (
        {"securityContext": {"allowPrivilegeEscalation": True}},
        "/securityContext/allowPrivilegeEscalation",
    ),
    "root": ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    "added capability": (
        {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
        "/securityContext/capabilities",
    ),
    "issuer kind": ({"certManager": {"issuerRef": {"name": "x", "kind": "Vault"}}}, "/certManager/issuerRef/kind"),
    "workspaces size": ({"workspaces": {"persistence": {"size": "lots"}}}, "/workspaces/persistence/size"),
    "snapshot key": ({"snapshots": {"key": ""}}, "/snapshots/key"),
}


def test_the_schema_is_a_valid_json_schema_and_accepts_the_defaults() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))


@pytest.mark.parametrize(("values", "message"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_the_schema_refuses_bad_values(helm: Path, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    values_file = _values_file(tmp_path, values)
    for result in (
        _template(helm, values_file, "airun-system", "--kube-version", KUBE_VERSION),
        _helm(helm, "lint", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(values_file)),
    ):
        assert result.returncode != 0, result.stdout
        output = result.stdout + result.stderr
        assert "values don't meet the specifications of the schema" in output, output
        assert message in output, output


SHARED_STORAGE = {"audit": {"store": "none"}, "workspaces": {"persistence": {"accessModes": ["ReadWriteMany"]}}}
BAD_REPLICAS: dict[str, tuple[dict[str, Any], str]] = {
    "fewer shards": ({**SHARED_STORAGE, "replicaCount": 3, "sharding": {"shards": 2}}, "needs sharding.shards >= 3"),
    "no leases": ({**SHARED_STORAGE, "replicaCount": 2, "sharding": {"shards": 0}}, "needs sharding.shards >= 2"),
    "one sqlite file": ({"replicaCount": 2, "workspaces": SHARED_STORAGE["workspaces"]}, "audit.store=postgresql"),
    "workspaces once": ({"replicaCount": 2, "audit": {"store": "none"}}, "ReadWriteMany"),
}


@pytest.mark.parametrize(("values", "message"), BAD_REPLICAS.values(), ids=BAD_REPLICAS.keys())
def test_several_replicas_are_refused_without_shards_or_shared_storage(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    result = _template(helm, _values_file(tmp_path, values), "airun-system", "--kube-version", KUBE_VERSION)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_several_replicas_share_the_shards_and_roll(helm: Path, tmp_path: Path) -> None:
    docs = objects(render(helm, tmp_path, {**SHARED_STORAGE, "replicaCount": 3}))
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = _container(docs)
    assert "--shards=6" in container["args"] and "--lease-seconds=15" in container["args"]
    identity = next(e for e in container["env"] if e["name"] == "POD_NAME")
    assert identity["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    rules = find(docs, "Role", "airun-operator-state")["rules"]
    assert {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "list", "watch", "create", "update", "delete"],
    } in rules


# --- one source of truth: crds/ and rbac/roles.yaml -------------------------------------------------------------


def test_the_chart_carries_the_repository_crds_and_roles() -> None:
    sources = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == sources
    for name in sources:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/airun/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/airun/crds/"
        )
    assert (CHART / "files" / "roles.yaml").read_bytes() == (REPO / "rbac" / "roles.yaml").read_bytes(), (
        "charts/airun/files/roles.yaml differs from rbac/roles.yaml: cp rbac/roles.yaml charts/airun/files/"
    )


def test_the_rendered_roles_are_those_of_rbac_roles_yaml(helm: Path, tmp_path: Path) -> None:
    rendered = {d["metadata"]["name"]: d for d in objects(render(helm, tmp_path, {})) if d["kind"] == "ClusterRole"}
    documents = list(yaml.safe_load_all((REPO / "rbac" / "roles.yaml").read_text()))
    sources = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ClusterRole"}
    assert rendered.keys() == sources.keys()
    # The operator's Roles (API server addresses in default, credentials in its own namespace) come along.
    roles = {
        (d["metadata"]["name"], d["metadata"]["namespace"]): d
        for d in objects(render(helm, tmp_path, {}))
        if d["kind"] == "Role"
    }
    for source in (d for d in documents if d["kind"] == "Role"):
        assert roles[(source["metadata"]["name"], source["metadata"]["namespace"])]["rules"] == source["rules"]
    for name, source in sources.items():
        rules = source["rules"]
        if name == "airun-operator":
            # The chart owns the webhook configurations: the operator may read them, not write them.
            rules = [
                r for r in rules if not ("admissionregistration.k8s.io" in r["apiGroups"] and "create" in r["verbs"])
            ]
            assert len(rules) == len(source["rules"]) - 1
        assert rendered[name]["rules"] == rules, name
        assert source["metadata"]["labels"].items() <= rendered[name]["metadata"]["labels"].items(), name


# --- the rendered RBAC, applied for real ----------------------------------------------------------------------


@pytest.fixture
def chart_rbac(helm: Path, kube: Kube, namespace: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The chart's ServiceAccount, ClusterRoles and binding in NAMESPACE; the roles renamed NAMESPACE-ROLE, so
    that the session's own roles (which the running operator needs) stay as they are. Yields the role names."""
    docs = objects(render(helm, tmp_path, {}, namespace))
    roles = {d["metadata"]["name"]: f"{namespace}-{d['metadata']['name']}" for d in docs if d["kind"] == "ClusterRole"}
    wanted = []
    for doc in docs:
        if doc["kind"] == "ClusterRole":
            doc["metadata"]["name"] = roles[doc["metadata"]["name"]]
        elif doc["kind"] == "ClusterRoleBinding":
            doc["metadata"]["name"] = f"{namespace}-{doc['metadata']['name']}"
            doc["roleRef"]["name"] = roles[doc["roleRef"]["name"]]
        elif doc["kind"] != "ServiceAccount":
            continue
        wanted.append(doc)
    for user, role in (("erin", "airun-author"), ("dave", "airun-approver"), ("frank", "airun-viewer")):
        wanted.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{namespace}-{user}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": roles[role]},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }
        )
    manifest = yaml.safe_dump_all(wanted)
    kube.run("apply", "-f", "-", stdin=manifest)
    try:
        yield roles
    finally:
        cluster_scoped = yaml.safe_dump_all([d for d in wanted if d["kind"] != "ServiceAccount"])
        kube.run("delete", "--ignore-not-found", "-f", "-", stdin=cluster_scoped)


def _can(kube: Kube, who: str, verb: str, resource: str, *extra: str) -> bool:
    result = kube.run("auth", "can-i", verb, resource, f"--as={who}", *extra, check=False)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


OPERATOR_MAY = [
    ("list", "workflows.aifirst.dev", "--all-namespaces"),
    ("watch", "workflows.aifirst.dev", "--all-namespaces"),
    ("patch", "workflows.aifirst.dev", "--subresource=status"),
    ("update", "workflows.aifirst.dev", "--subresource=finalizers"),
    ("patch", "workflows.aifirst.dev"),
    ("create", "approvals.aifirst.dev"),
    ("delete", "approvals.aifirst.dev"),
    ("patch", "approvals.aifirst.dev", "--subresource=status"),
    ("watch", "capabilities.aifirst.dev"),
    ("watch", "clusterpolicies.aifirst.dev"),
    ("watch", "policies.aifirst.dev", "--all-namespaces"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("watch", "namespaces"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    # the k8s.* capabilities act as each workflow's principal
    ("impersonate", "users"),
    ("impersonate", "groups"),
    ("impersonate", "serviceaccounts"),
    # it starts no new workflow while its webhook configurations are missing
    ("get", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("get", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
]
OPERATOR_MAY_NOT = [
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("create", "workflows.aifirst.dev"),
    ("delete", "workflows.aifirst.dev"),
    ("get", "secrets"),
    ("create", "configmaps"),
]


def test_the_operator_service_account_may_do_what_it_needs_and_no_more(
    kube: Kube, namespace: str, chart_rbac: dict[str, str]
) -> None:
    operator = f"system:serviceaccount:{namespace}:{RELEASE}-operator"
    assert kube.get("serviceaccount", f"{RELEASE}-operator", namespace)
    refused = [check for check in OPERATOR_MAY if not _can(kube, operator, *check)]
    assert not refused, f"the operator may not: {refused}"
    allowed = [check for check in OPERATOR_MAY_NOT if _can(kube, operator, *check)]
    assert not allowed, f"the operator may: {allowed}"


def test_the_user_roles_grant_what_they_say(kube: Kube, namespace: str, chart_rbac: dict[str, str]) -> None:
    ns = ("-n", namespace)
    assert _can(kube, "erin", "create", "workflows.aifirst.dev", *ns)
    assert not _can(kube, "erin", "patch", "approvals.aifirst.dev", *ns)
    assert _can(kube, "dave", "patch", "approvals.aifirst.dev", *ns)
    assert not _can(kube, "dave", "create", "workflows.aifirst.dev", *ns)
    assert _can(kube, "frank", "list", "workflows.aifirst.dev", *ns)
    assert not _can(kube, "frank", "patch", "workflows.aifirst.dev", *ns)
    # author and viewer aggregate into the built-in edit and view roles
    labels = {name: kube.get("clusterrole", role)["metadata"]["labels"] for name, role in chart_rbac.items()}
    assert labels["airun-author"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["airun-viewer"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"


# --- the webhooks: what the chart registers is what the operator serves -----------------------------------------


def test_the_webhooks_are_those_kopf_builds_for_the_operator(helm: Path, tmp_path: Path) -> None:
    """kopf's build of the operator's handlers plus the matchConditions (controller/operator/webhooks.py, the
    builder with which the operator writes them locally)."""
    from kopf._core.intents.causes import WebhookType

    from controller.operator import admission, webhooks
    from controller.operator.main import WEBHOOK_CONFIGURATION

    registry = kopf.OperatorRegistry()
    admission.register(registry, runtime=None, operator_user="operator", bind=lambda _: None)  # type: ignore[arg-type]
    handlers = registry._webhooks.get_all_handlers()
    assert {h.id for h in handlers} >= {"workflow-principal", "approval-decision", "workflow-deletion"}
    built = webhooks.configurations(
        registry,
        WEBHOOK_CONFIGURATION,
        {"service": {"name": f"{RELEASE}-webhook", "namespace": "airun-system", "port": 443}},
    )
    docs = objects(render(helm, tmp_path, {}))
    for kind, reason in (
        ("MutatingWebhookConfiguration", WebhookType.MUTATING),
        ("ValidatingWebhookConfiguration", WebhookType.VALIDATING),
    ):
        configuration = find(docs, kind)
        assert configuration["metadata"]["name"] == WEBHOOK_CONFIGURATION
        rendered = configuration["webhooks"]
        ca_bundles = {w["clientConfig"].pop("caBundle") for w in rendered}
        ca = find(docs, "Secret", f"{RELEASE}-webhook-cert")["data"]["ca.crt"]
        assert ca_bundles == {ca}
        expected = built[reason]
        updates = [w for w in expected if "UPDATE" in w["rules"][0]["operations"]]
        assert updates and all(w["matchConditions"] for w in updates)  # metadata-only updates pass
        assert sorted(rendered, key=lambda w: w["name"]) == sorted(expected, key=lambda w: w["name"]), kind


def test_the_webhook_certificate_names_the_service_and_is_kept_across_upgrades(
    helm: Path, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    from cryptography import x509

    first = objects(render(helm, tmp_path, {}, namespace))
    secret = find(first, "Secret", f"{RELEASE}-webhook-cert")
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"{RELEASE}-webhook.{namespace}.svc" in names
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert.verify_directly_issued_by(ca)

    # Without the cluster, every rendering makes a new CA (the control for what follows).
    assert find(objects(render(helm, tmp_path, {}, namespace)), "Secret", secret["metadata"]["name"]) != secret
    # An upgrade (rendering against the cluster) keeps the Secrets that exist.
    notify = find(first, "Secret", f"{RELEASE}-notify")
    snapshot_key = find(first, "Secret", f"{RELEASE}-snapshot-key")
    kube.run("apply", "-f", "-", stdin=yaml.safe_dump_all([secret, notify, snapshot_key]))
    context = ["--kube-context", "admin"] if kube.local else []
    cluster = ["--dry-run=server", "--kubeconfig", str(kube.kubeconfig), *context, "--kube-version", KUBE_VERSION]
    upgrade = _template(helm, _values_file(tmp_path, {}), namespace, *cluster)
    assert upgrade.returncode == 0, upgrade.stderr
    again = objects(upgrade.stdout)
    assert find(again, "Secret", secret["metadata"]["name"])["data"] == secret["data"]
    assert find(again, "Secret", notify["metadata"]["name"])["data"] == notify["data"]
    assert find(again, "Secret", snapshot_key["metadata"]["name"])["data"] == snapshot_key["data"]
    bundles = {w["clientConfig"]["caBundle"] for w in find(again, "ValidatingWebhookConfiguration")["webhooks"]}
    assert bundles == {secret["data"]["ca.crt"]}


def test_cert_manager_mode_injects_the_ca_instead(helm: Path, tmp_path: Path) -> None:
    docs = objects(render(helm, tmp_path, {"certManager": {"enabled": True}}))
    certificate = find(docs, "Certificate", f"{RELEASE}-webhook")
    assert certificate["spec"]["secretName"] == f"{RELEASE}-webhook-cert"
    # The chart's own CA signs it: a renewed serving certificate is still trusted by the same caBundle.
    ca_issuer = find(docs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    ca = find(docs, "Certificate", f"{RELEASE}-ca")
    assert ca["spec"]["isCA"] is True and ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert find(docs, "Issuer", ca["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{RELEASE}-webhook-cert"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        configuration = find(docs, kind)
        inject = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert inject == f"airun-system/{certificate['metadata']['name']}"
        assert all("caBundle" not in w["clientConfig"] for w in configuration["webhooks"])

    values = {"certManager": {"enabled": True, "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}}
    docs = objects(render(helm, tmp_path, values))
    assert not [d for d in docs if d["kind"] == "Issuer"]
    assert find(docs, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


# --- the Deployment, the audit store, monitoring -----------------------------------------------------------------


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def test_the_operator_runs_as_the_chart_expects(helm: Path, tmp_path: Path) -> None:
    docs = objects(render(helm, tmp_path, {}))
    deployment = find(docs, "Deployment")
    container = _container(docs)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--no-webhook-managed" in container["args"] and "--bind=0.0.0.0" in container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert f"--health-port={ports['health']}" in container["args"]
    assert f"--webhook-port={ports['webhook']}" in container["args"]
    assert f"--metrics-port={ports['metrics']}" in container["args"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == ["ALL"]
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["limits"]["memory"]
    # A rolling update lets running steps finish: the operator drains for less than the Pod's grace period.
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    assert "--shutdown-grace-seconds=25" in container["args"]
    # The arguments are those of `airun operator` (the image's entrypoint).
    from controller.cli.main import main

    help_text = CliRunner().invoke(main, ["operator", "--help"]).output
    for arg in container["args"]:
        assert arg.split("=")[0] in help_text, arg


def test_audit_store_sqlite_on_a_claim_or_postgresql_from_a_secret(helm: Path, tmp_path: Path) -> None:
    docs = objects(render(helm, tmp_path, {}))
    env = {e["name"]: e for e in _container(docs)["env"]}
    assert env["AIRUN_AUDIT_URL"]["value"] == "sqlite:////var/lib/airun/audit/audit.db"
    claim = find(docs, "PersistentVolumeClaim", f"{RELEASE}-audit")
    volumes = {v["name"]: v for v in find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["audit"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    values = {"audit": {"store": "postgresql", "postgresql": {"existingSecret": "db", "key": "dsn"}}}
    docs = objects(render(helm, tmp_path, values))
    env = {e["name"]: e for e in _container(docs)["env"]}
    assert env["AIRUN_AUDIT_URL"] == {
        "name": "AIRUN_AUDIT_URL",
        "valueFrom": {"secretKeyRef": {"name": "db", "key": "dsn"}},
    }
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"].endswith("-audit")]


def test_workspaces_and_snapshots_outlive_the_pod(helm: Path, tmp_path: Path) -> None:
    """Compensations restore from snapshots on the workspaces volume: a PVC by default (kept on uninstall),
    an emptyDir only when asked; Secret snapshots are sealed with a key from a Secret the chart keeps."""
    docs = objects(render(helm, tmp_path, {}))
    claim = find(docs, "PersistentVolumeClaim", f"{RELEASE}-workspaces")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    volumes = {v["name"]: v for v in find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["workspaces"] == {
        "name": "workspaces",
        "persistentVolumeClaim": {"claimName": f"{RELEASE}-workspaces"},
    }
    key = find(docs, "Secret", f"{RELEASE}-snapshot-key")
    assert key["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" and key["data"]["key"]
    assert volumes["snapshot-key"]["secret"]["secretName"] == key["metadata"]["name"]
    assert "--snapshot-key-file=/etc/airun/snapshot-key/key" in _container(docs)["args"]

    for values in (
        {"workspaces": {"persistence": {"existingClaim": "mine"}}},
        {"workspaces": {"existingClaim": "mine"}},
    ):
        docs = objects(render(helm, tmp_path, values))
        volumes = {v["name"]: v for v in find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
        assert volumes["workspaces"]["persistentVolumeClaim"] == {"claimName": "mine"}
        assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim" and "workspaces" in d["metadata"]["name"]]

    docs = objects(render(helm, tmp_path, {"workspaces": {"persistence": {"enabled": False}}}))
    volumes = {v["name"]: v for v in find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["workspaces"] == {"name": "workspaces", "emptyDir": {}}


def test_monitoring_scrapes_as_job_airun_operator_and_ships_the_alert_rules(helm: Path, tmp_path: Path) -> None:
    docs = objects(render(helm, tmp_path, MONITORING))
    monitor = find(docs, "ServiceMonitor")
    service = find(docs, "Service", f"{RELEASE}-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= find(docs, "Service", f"{RELEASE}-webhook")["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "airun-operator"} in endpoint["relabelings"]
    assert endpoint["honorLabels"] is True  # the rules group by the workflows' namespace label
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert find(docs, "PrometheusRule")["spec"]["groups"] == rules["groups"]
    assert not [d for d in objects(render(helm, tmp_path, {})) if d["kind"] in ("ServiceMonitor", "PrometheusRule")]


# --- the operator's side: it can leave the webhook configurations to the chart ------------------------------------


@pytest.mark.parametrize("managed", [True, False])
def test_the_operator_manages_the_webhook_configurations_only_when_asked(managed: bool) -> None:
    """Never through kopf's manager (it writes no matchConditions): managed, the operator's own server
    writes them each time it has its client config."""
    from controller.operator.main import OperatorOptions, _configure
    from controller.operator.webhooks import RegisteringServer

    async def register(_: object) -> None:
        return None

    settings = kopf.OperatorSettings()
    _configure(settings, OperatorOptions(bind="0.0.0.0", webhook_port=9443, webhook_managed=managed), register)
    assert settings.admission.managed is None
    server = settings.admission.server
    if managed:
        assert isinstance(server, RegisteringServer)
        server = server.server
    assert isinstance(server, kopf.WebhookServer) and server.port == 9443 and server.addr == "0.0.0.0"


# --- in a Pod: the operator authenticates with its ServiceAccount token -------------------------------------------


def test_in_a_pod_the_operator_and_its_capabilities_use_the_service_account_token(
    kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from kubernetes_asyncio import client, config

    from controller.operator.kube import Connection
    from controller.operator.main import whoami

    # What the kubelet gives the chart's Pod: a token file, the cluster CA, KUBERNETES_SERVICE_HOST/PORT.
    token = kube.run("create", "token", "airun-operator", "-n", "airun-system").stdout.strip()
    (tmp_path / "token").write_text(token)
    cluster = yaml.safe_load(kube.kubeconfig.read_text())["clusters"][0]["cluster"]
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    host, _, port = cluster["server"].removeprefix("https://").rpartition(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)

    async def connect_in_cluster() -> tuple[str, Connection]:
        configuration = client.Configuration()
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration,
            token_filename=str(tmp_path / "token"),
            cert_filename=str(tmp_path / "ca.crt"),
        )
        connection = Connection(client.ApiClient(configuration), configuration)
        try:
            return await whoami(connection), connection
        finally:
            await connection.close()

    user, connection = asyncio.run(connect_in_cluster())
    assert user == "system:serviceaccount:airun-system:airun-operator"
    assert asyncio.run(connection.connection_info()).token == token  # kopf's watches
    gateway_token = connection.gateway().token
    assert gateway_token is not None and asyncio.run(gateway_token()) == token  # the k8s.* capabilities


def test_helm_install_renders_the_notes(helm: Path, kube: Kube, namespace: str) -> None:
    context = ["--kube-context", "admin"] if kube.local else []
    argv = ["install", "airun-notes", str(CHART), "--namespace", namespace, "--dry-run=server"]
    argv += ["--kubeconfig", str(kube.kubeconfig), *context, "--set", "audit.sqlite.persistence.enabled=false"]
    # The session's roles come from rbac/roles.yaml, applied by kubectl: Helm would refuse to adopt them.
    argv += ["--set", "rbac.create=false", "--set", "serviceAccount.create=false"]
    argv += ["--set", "serviceAccount.name=airun-operator"]
    result = _helm(helm, *argv)
    assert result.returncode == 0, result.stderr
    notes = result.stdout.partition("NOTES:")[2]
    assert f"kubectl -n {namespace} rollout status deployment/airun-notes-operator" in notes
    assert "THE AUDIT TRAIL IS LOST WITH THE POD" in notes
