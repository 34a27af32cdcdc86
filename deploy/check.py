#!/usr/bin/env python3
"""Offline checks of everything under deploy/, the Dockerfile and docs/kubernetes.md.

Run through deploy/check.sh (which installs the pinned tools into a venv and finds the
coscale binary). No cluster is needed or contacted:

* every kustomization (base and overlays) builds with `kubectl kustomize`;
* standard objects pass kubernetes-validate --strict for Kubernetes 1.27, 1.33 and 1.37;
* Models, Servers, ServerConfigs and HPAs pass `coscale validate`; each ServerConfig's
  podSpec, wrapped in a Pod, passes kubernetes-validate --strict too;
* the names, ports, flags and volumes of K8S-CONTRACT.md are what the manifests say;
* the Helm chart renders (Helm's own engine, helm-python-sdk), lints, renders the same
  objects with the same specs as kustomize, and its options render valid objects;
* the YAML examples in docs/kubernetes.md validate, and the seed's fixture manifests
  appear in it verbatim;
* the Dockerfile passes hadolint and builds the package, binary and paths that exist.

Each check prints `ok` or `FAIL` with the reason; the last line is `N passed, N failed`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "coscale"
K8S_VERSIONS = ["1.27.0", "1.33.0", "1.37.0"]
SELDON_API = "mlops.seldon.io/v1alpha1"
CRD_FILES = [
    "models.mlops.seldon.io.yaml",
    "servers.mlops.seldon.io.yaml",
    "serverconfigs.mlops.seldon.io.yaml",
]
NAMESPACE = "coscale-system"
RELEASE = "coscale"

# K8S-CONTRACT.md, "Names": what the manifests must say.
CONTROL_ARGS = [
    "up", "--provisioner", "kubernetes", "--data-dir", "/var/lib/coscale",
    "--api-addr", "0.0.0.0:9004", "--agent-addr", "0.0.0.0:9005",
    "--router-addr", "0.0.0.0:9000", "--router-grpc-addr", "0.0.0.0:9500",
    "--custom-metrics-addr", "0.0.0.0:6443", "--keda-scaler-addr", "0.0.0.0:9006",
    "--auth", "kubernetes",
]
CONTROL_PORTS = {
    "api": 9004, "agent": 9005, "infer-http": 9000, "infer-grpc": 9500,
    "custom-metrics": 6443, "keda": 9006,
}
OPERATOR_ARGS = [
    "operator", "--control-plane-url", "http://coscale-control:9004",
    "--token-file", "/var/run/secrets/coscale/token",
]
MLSERVER_IMAGE = "seldonio/mlserver:1.7.1"


class Checks:
    """Counts and prints results; a check is a function that raises Failure or returns."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, name: str, fn: Callable[[], str | None]) -> bool:
        try:
            detail = fn()
        except Failure as e:
            message = str(e)
        except Exception as e:  # a bug in a check or a tool: report it, keep going
            message = f"{type(e).__name__}: {e}"
        else:
            self.passed += 1
            print(f"ok   {name}{': ' + detail if detail else ''}", flush=True)
            return True
        self.failed += 1
        print(f"FAIL {name}\n     {message.replace(chr(10), chr(10) + '     ')}", flush=True)
        return False


class Failure(Exception):
    pass


def fail_if(problems: list[str]) -> None:
    if problems:
        raise Failure("\n".join(problems))


# --------------------------------------------------------------------------- helpers

def workspace_version() -> str:
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def coscale_image() -> str:
    return f"ghcr.io/coscale/coscale:{workspace_version()}"


def load_all(text: str, where: str) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise Failure(f"{where}: not valid YAML: {e}") from e
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise Failure(f"{where}: document {i + 1} is a {type(d).__name__}, not an object")
    return docs


def key(obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj.get("kind", "?"), meta.get("namespace", ""), meta.get("name", "?"))


def label(obj: dict) -> str:
    kind, ns, name = key(obj)
    return f"{kind} {ns + '/' if ns else ''}{name}"


def kustomize(directory: Path) -> list[dict]:
    env = dict(os.environ, KUBECONFIG="/nonexistent")
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise Failure(f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{out.stderr.strip()}")
    return load_all(out.stdout, str(directory.relative_to(ROOT)))


def render_chart(values: dict | None = None, namespace: str = NAMESPACE) -> list[dict]:
    with helm_python.Chart.load(str(CHART)) as chart:
        try:
            rendered = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
        except helm_python.HelmError as e:
            raise Failure(f"helm render with {values}: {e}") from e
        crds = [c["data"] for c in chart.crds]
    objects: list[dict] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        objects.extend(load_all(text, path))
    for text in crds:
        objects.extend(load_all(text, "chart crds/"))
    return objects


_validated: dict[str, list[str]] = {}


def kube_validate(obj: dict, where: str) -> list[str]:
    """kubernetes-validate --strict for every version in K8S_VERSIONS (an object seen
    before, e.g. the same one from kustomize and Helm, is not validated twice)."""
    seen = json.dumps(obj, sort_keys=True)
    if seen not in _validated:
        found = []
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                found.append(f"{label(obj)} (Kubernetes {version}) {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                found.append(
                    f"{label(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')} "
                    f"in Kubernetes {version}"
                )
        _validated[seen] = found
    return [f"{where}: {p}" for p in _validated[seen]]


def pod_of(server_config: dict) -> dict:
    """A ServerConfig's podSpec as the Pod a StatefulSet would make of it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"serverconfig-{server_config['metadata']['name']}-0"},
        "spec": server_config.get("spec", {}).get("podSpec", {}),
    }


def coscale_validate(objects: list[dict], where: str) -> list[str]:
    """`coscale validate` on the objects (one file), every error reported."""
    if not objects:
        return []
    command = shlex.split(os.environ.get("COSCALE_VALIDATE", ""))
    if not command:
        raise Failure("COSCALE_VALIDATE is not set (deploy/check.sh sets it to the coscale binary)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifests.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        out = subprocess.run(command + ["validate", "-f", str(path)], capture_output=True, text=True)
        output = (out.stderr + out.stdout).replace(str(path), "manifest").strip()
    if out.returncode != 0:
        return [f"{where}: coscale validate failed:\n{output}"]
    valid = sum(1 for line in out.stdout.splitlines() if line.endswith(" valid"))
    if valid != len(objects):
        return [f"{where}: coscale validate reported {valid} valid objects of {len(objects)}:\n{out.stdout}"]
    return []


def is_custom(obj: dict) -> bool:
    return obj.get("apiVersion") == SELDON_API


def structural(schema: Any, root: bool = False, in_logic: bool = False) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema with the API server's strict field
    validation: unknown fields are errors unless x-kubernetes-preserve-unknown-fields,
    `nullable` admits null, int-or-string admits both. Inside anyOf/oneOf/allOf/not,
    `properties` only validate (structural schemas declare fields outside them)."""
    if isinstance(schema, list):
        return [structural(s, in_logic=in_logic) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k.startswith("x-kubernetes-"):
            continue
        if k in ("properties", "patternProperties", "definitions") and isinstance(v, dict):
            out[k] = {name: structural(sub, in_logic=in_logic) for name, sub in v.items()}
        else:
            out[k] = structural(v, in_logic=in_logic or k in ("anyOf", "oneOf", "allOf", "not"))
    if root:
        props = dict(out.get("properties", {}))
        for implicit in ("apiVersion", "kind"):
            props.setdefault(implicit, {"type": "string"})
        props["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server itself
        out["properties"] = props
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and not in_logic
        and "additionalProperties" not in out
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


_crd_schemas: dict[tuple[str, str], dict] = {}


def crd_schema(api_version: str, kind: str) -> dict | None:
    """The JSON Schema of (apiVersion, kind) from the CRDs in deploy/crds."""
    if not _crd_schemas:
        for f in CRD_FILES:
            for crd in load_all((DEPLOY / "crds" / f).read_text(), f"deploy/crds/{f}"):
                spec = crd.get("spec", {})
                for version in spec.get("versions", []):
                    schema = version.get("schema", {}).get("openAPIV3Schema")
                    if schema is not None:
                        api = f"{spec.get('group')}/{version.get('name')}"
                        _crd_schemas[(api, spec.get("names", {}).get("kind"))] = structural(schema, root=True)
    return _crd_schemas.get((api_version, kind))


def crd_validate(obj: dict, where: str) -> list[str]:
    """A custom resource against its CRD's schema, as the API server would check it."""
    schema = crd_schema(obj.get("apiVersion", ""), obj.get("kind", ""))
    if schema is None:
        return [f"{where}: {label(obj)}: no CRD in deploy/crds defines {obj.get('apiVersion')} {obj.get('kind')}"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{where}: {label(obj)} (CRD schema) {'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def validate_objects(objects: list[dict], where: str) -> str:
    """Standard objects by schema; coscale's own and HPAs by `coscale validate`."""
    problems: list[str] = []
    ours = []
    for obj in objects:
        if is_custom(obj) or obj.get("kind") == "HorizontalPodAutoscaler":
            ours.append(obj)
        if is_custom(obj):
            problems += crd_validate(obj, where)
        if obj.get("kind") == "ServerConfig":
            problems += kube_validate(pod_of(obj), f"{where} ({label(obj)} podSpec)")
        if not is_custom(obj):
            problems += kube_validate(obj, where)
    problems += coscale_validate(ours, where)
    fail_if(problems)
    custom = sum(1 for o in objects if is_custom(o))
    return f"{len(objects) - custom} standard by schema, {custom} by CRD schema, {len(ours)} by coscale validate"


# --------------------------------------------------------------------------- CRDs

def check_crds_present() -> str:
    missing = [f"deploy/crds/{f}" for f in CRD_FILES if not (DEPLOY / "crds" / f).is_file()]
    if missing:
        raise Failure(
            "deploy/crds missing: run coscale crds --out deploy/crds (absent: " + ", ".join(missing) + ")"
        )
    problems = []
    for f in CRD_FILES:
        copy_ = CHART / "crds" / f
        if not copy_.is_file():
            problems.append(
                f"deploy/helm/coscale/crds/{f} missing: run coscale crds --out deploy/helm/coscale/crds"
            )
        elif copy_.read_bytes() != (DEPLOY / "crds" / f).read_bytes():
            problems.append(f"deploy/helm/coscale/crds/{f} differs from deploy/crds/{f}")
    fail_if(problems)
    return "3 CRDs, identical copies in the chart"


# --------------------------------------------------------------------------- contract

def containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("podSpec") or {}
    return pod.get("containers", [])


def pod_spec(obj: dict) -> dict:
    spec = obj.get("spec", {})
    return spec.get("template", {}).get("spec") or spec.get("podSpec") or {}


def check_contract(objects: list[dict], where: str, overlay: str) -> str:
    """The names and settings of K8S-CONTRACT.md, plus the security baseline."""
    by = {key(o): o for o in objects}
    problems: list[str] = []

    def need(kind: str, name: str, ns: str = NAMESPACE) -> dict:
        obj = by.get((kind, ns, name))
        if obj is None:
            problems.append(f"{where}: {kind} {ns + '/' if ns else ''}{name} is missing")
            return {}
        return obj

    for crd in CRD_FILES:
        need("CustomResourceDefinition", crd.removesuffix(".yaml"), "")
    need("ServiceAccount", "coscale-control")
    need("ServiceAccount", "coscale-operator")
    need("ClusterRole", "coscale-operator", "")
    need("ClusterRole", "coscale-control", "")
    need("PersistentVolumeClaim", "coscale-data")

    control = need("Deployment", "coscale-control")
    if control:
        spec = control["spec"]
        if spec.get("replicas") != 1 or spec.get("strategy", {}).get("type") != "Recreate":
            problems.append(f"{where}: coscale-control must have 1 replica and strategy Recreate")
        c = containers(control)[0]
        if c.get("args") != CONTROL_ARGS:
            problems.append(f"{where}: coscale-control args {c.get('args')} != contract {CONTROL_ARGS}")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod_spec(control).get("volumes", [])}
        data = vols.get(mounts.get("/var/lib/coscale", ""), {})
        if data.get("persistentVolumeClaim", {}).get("claimName") != "coscale-data":
            problems.append(f"{where}: /var/lib/coscale of coscale-control is not the PVC coscale-data")
        if pod_spec(control).get("serviceAccountName") != "coscale-control":
            problems.append(f"{where}: coscale-control runs as {pod_spec(control).get('serviceAccountName')}")
        for probe in ("readinessProbe", "livenessProbe"):
            if c.get(probe, {}).get("httpGet", {}).get("path") != "/healthz":
                problems.append(f"{where}: coscale-control {probe} is not GET /healthz")
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
            problems.append(f"{where}: coscale-control needs POD_NAMESPACE from the downward API")

    service = need("Service", "coscale-control")
    if service:
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        if ports != CONTROL_PORTS:
            problems.append(f"{where}: Service coscale-control ports {ports} != contract {CONTROL_PORTS}")
        if control and service["spec"].get("selector") != control["spec"]["template"]["metadata"]["labels"]:
            problems.append(f"{where}: Service coscale-control does not select the coscale-control pods")

    operator = need("Deployment", "coscale-operator")
    if operator:
        c = containers(operator)[0]
        if c.get("args") != OPERATOR_ARGS:
            problems.append(f"{where}: coscale-operator args {c.get('args')} != contract {OPERATOR_ARGS}")
        if pod_spec(operator).get("serviceAccountName") != "coscale-operator":
            problems.append(f"{where}: coscale-operator does not run as ServiceAccount coscale-operator")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        token = {v["name"]: v for v in pod_spec(operator).get("volumes", [])}.get("coscale-token", {})
        sources = token.get("projected", {}).get("sources", [{}])
        sat = sources[0].get("serviceAccountToken", {}) if sources else {}
        if mounts.get("coscale-token") != "/var/run/secrets/coscale" or sat.get("audience") != "coscale" or sat.get("path") != "token":
            problems.append(f"{where}: coscale-operator needs the projected token (audience coscale) at /var/run/secrets/coscale/token")

    if overlay != "no-metrics-api":
        for version in ("v1beta1", "v1beta2"):
            api = need("APIService", f"{version}.custom.metrics.k8s.io", "")
            if api:
                svc = api["spec"]["service"]
                if (svc.get("name"), svc.get("namespace"), svc.get("port")) != ("coscale-control", NAMESPACE, 6443):
                    problems.append(f"{where}: APIService {version} points at {svc}, not coscale-control:6443")
                if api["spec"].get("group") != "custom.metrics.k8s.io" or api["spec"].get("version") != version:
                    problems.append(f"{where}: APIService {version} has group/version {api['spec'].get('group')}/{api['spec'].get('version')}")
        need("ClusterRoleBinding", "coscale-control:system:auth-delegator", "")
        need("RoleBinding", "coscale-control-auth-reader", "kube-system")
        hpa = need("ClusterRoleBinding", "coscale-hpa-custom-metrics", "")
        if hpa and hpa.get("subjects") != [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}]:
            problems.append(f"{where}: coscale-hpa-custom-metrics must bind kube-system/horizontal-pod-autoscaler")

    for name, runtime in (("builtin", "builtin"), ("mlserver", "mlserver")):
        sc = need("ServerConfig", name)
        if not sc:
            continue
        cs = {c["name"]: c for c in containers(sc)}
        agent = cs.get("agent")
        if agent is None:
            problems.append(f"{where}: ServerConfig {name} has no container named agent")
            continue
        env = {e["name"]: e.get("value") for e in agent.get("env", [])}
        if env.get("COSCALE_RUNTIME") != runtime:
            problems.append(f"{where}: ServerConfig {name}: agent COSCALE_RUNTIME={env.get('COSCALE_RUNTIME')}")
        if agent.get("args") != ["agent"]:
            problems.append(f"{where}: ServerConfig {name}: the agent container must run `coscale agent`")
        if name == "mlserver":
            ml = cs.get("mlserver", {})
            if ml.get("image") != MLSERVER_IMAGE:
                problems.append(f"{where}: ServerConfig mlserver: mlserver image {ml.get('image')} != {MLSERVER_IMAGE}")
            if env.get("COSCALE_MLSERVER_URL") != "http://127.0.0.1:8080" or env.get("COSCALE_MODELS_DIR") != "/mnt/models":
                problems.append(f"{where}: ServerConfig mlserver: agent needs COSCALE_MLSERVER_URL and COSCALE_MODELS_DIR=/mnt/models")
            vols = {v["name"]: v for v in pod_spec(sc).get("volumes", [])}
            if "emptyDir" not in vols.get("models", {}):
                problems.append(f"{where}: ServerConfig mlserver: volume models must be an emptyDir")
            for c in (agent, ml):
                if {"name": "models", "mountPath": "/mnt/models"} not in c.get("volumeMounts", []):
                    problems.append(f"{where}: ServerConfig mlserver: {c.get('name')} must mount models at /mnt/models")

    problems += check_security(objects, where)
    fail_if(problems)
    return "names, ports, flags, volumes and security settings as in the contract"


def check_security(objects: list[dict], where: str) -> list[str]:
    """Non-root, no capabilities, no privilege escalation, memory limits, our image."""
    problems = []
    for obj in objects:
        if obj.get("kind") not in ("Deployment", "ServerConfig"):
            continue
        pod = pod_spec(obj)
        pod_sc = pod.get("securityContext", {})
        for c in pod.get("containers", []):
            sc = c.get("securityContext", {})
            what = f"{where}: {label(obj)} container {c.get('name')}"
            if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
                problems.append(f"{what}: runAsNonRoot is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{what}: allowPrivilegeEscalation is not false")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{what}: capabilities do not drop ALL")
            if c.get("name") != "mlserver" and sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{what}: readOnlyRootFilesystem is not true")
            res = c.get("resources", {})
            if "memory" not in res.get("limits", {}) or not {"cpu", "memory"} <= set(res.get("requests", {})):
                problems.append(f"{what}: needs cpu+memory requests and a memory limit")
            if c.get("name") != "mlserver" and c.get("image") != coscale_image():
                problems.append(f"{what}: image {c.get('image')} != {coscale_image()}")
    return problems


# --------------------------------------------------------------------------- Helm

def comparable(obj: dict) -> dict:
    """An object without the labels and annotations Helm adds to its metadata."""
    obj = copy.deepcopy(obj)
    obj.get("metadata", {}).pop("labels", None)
    obj.get("metadata", {}).pop("annotations", None)
    return obj


def compare_sets(kustomized: list[dict], helm: list[dict], what: str) -> list[str]:
    """The same objects (kind, namespace, name) with the same content, Namespace aside
    (Helm installs into the release namespace, `--create-namespace`)."""
    k = {key(o): comparable(o) for o in kustomized if o.get("kind") != "Namespace"}
    h = {key(o): comparable(o) for o in helm}
    problems = []
    for only, side in ((k.keys() - h.keys(), "kustomize"), (h.keys() - k.keys(), "helm")):
        for item in sorted(only):
            problems.append(f"{what}: {item[0]} {item[1] + '/' if item[1] else ''}{item[2]} only in {side}")
    for item in sorted(k.keys() & h.keys()):
        if k[item] != h[item]:
            problems.append(f"{what}: {item[0]} {item[2]} differs:\n{diff(k[item], h[item])}")
    return problems


def diff(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        return "\n".join(
            d for k in sorted(a.keys() | b.keys(), key=str)
            if (d := diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}"))
        )
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return "\n".join(d for i, (x, y) in enumerate(zip(a, b)) if (d := diff(x, y, f"{path}[{i}]")))
    return "" if a == b else f"  {path}: kustomize {a!r} / helm {b!r}"


def check_helm_lint() -> str:
    report = helm_python.lint(str(CHART), strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + [
        {"error": e} for e in report.get("errors", [])
    ]
    fail_if([f"helm lint: {m.get('path', '')} {m['error']}" for m in bad])
    return f"helm lint --strict (Helm SDK {helm_python.helm_sdk_version()})"


def check_helm_variants() -> str:
    """Each option renders valid objects that do what values.yaml says."""
    problems: list[str] = []

    def objs(values: dict, ns: str = NAMESPACE) -> dict:
        rendered = render_chart(values, ns)
        try:
            validate_objects(rendered, f"helm {values or 'defaults'} in {ns}")
        except Failure as e:
            problems.append(str(e))
        return {key(o): o for o in rendered}

    ns = "ml-platform"
    o = objs({"scope": "namespace", "watchNamespace": "models"}, ns)
    role = o.get(("Role", "models", "coscale-operator"))
    binding = o.get(("RoleBinding", "models", "coscale-operator"))
    if not role or not binding or ("ClusterRole", "", "coscale-operator") in o:
        problems.append("scope=namespace: expected Role+RoleBinding coscale-operator in `models` and no ClusterRole")
    elif binding["subjects"] != [{"kind": "ServiceAccount", "name": "coscale-operator", "namespace": ns}]:
        problems.append(f"scope=namespace: RoleBinding subjects {binding['subjects']}")
    if ("Role", ns, "coscale-operator-serverconfigs") not in o or ("RoleBinding", ns, "coscale-operator-serverconfigs") not in o:
        problems.append(f"scope=namespace: the operator cannot read the default ServerConfigs in {ns}")
    args = containers(o[("Deployment", ns, "coscale-operator")])[0]["args"]
    if args[-2:] != ["--namespace", "models"]:
        problems.append(f"scope=namespace: operator args {args} lack --namespace models")
    api = o.get(("APIService", "", "v1beta2.custom.metrics.k8s.io"), {})
    if api.get("spec", {}).get("service", {}).get("namespace") != ns:
        problems.append(f"release namespace {ns}: APIService does not point at {ns}")

    o = objs({"keda": {"enabled": False}})
    control = o[("Deployment", NAMESPACE, "coscale-control")]
    ports = [p["name"] for p in o[("Service", NAMESPACE, "coscale-control")]["spec"]["ports"]]
    if "--keda-scaler-addr" in containers(control)[0]["args"] or "keda" in ports:
        problems.append("keda.enabled=false still renders the KEDA scaler flag or port")

    o = objs({
        "controlPlane": {
            "tlsSecretName": "coscale-tls", "clientCAConfigMap": "aggregator-ca",
            "storage": {"storageClassName": "-", "size": "5Gi"},
        },
        "metricsApi": {
            "insecureSkipTLSVerify": False,
            "annotations": {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/coscale-tls"},
        },
        "image": {"tag": "9.9.9"},
    })
    args = containers(o[("Deployment", NAMESPACE, "coscale-control")])[0]["args"]
    for flag in ("--tls-cert-file", "--tls-key-file", "--client-ca-file"):
        if flag not in args:
            problems.append(f"tlsSecretName/clientCAConfigMap: {flag} missing from {args}")
    pvc = o[("PersistentVolumeClaim", NAMESPACE, "coscale-data")]["spec"]
    if pvc.get("storageClassName") != "" or pvc["resources"]["requests"]["storage"] != "5Gi":
        problems.append(f"storage values not applied: {pvc}")
    api = o[("APIService", "", "v1beta2.custom.metrics.k8s.io")]
    if "insecureSkipTLSVerify" in api["spec"] or "cert-manager.io/inject-ca-from" not in api["metadata"].get("annotations", {}):
        problems.append("metricsApi cert-manager settings not applied")
    images = {c["image"] for c in containers(o[("Deployment", NAMESPACE, "coscale-operator")])}
    if images != {"ghcr.io/coscale/coscale:9.9.9"}:
        problems.append(f"image.tag not applied: {images}")

    o = objs({"serverConfigs": {"enabled": False}, "controlPlane": {"storage": {"storageClassName": "fast"}}})
    if any(k[0] == "ServerConfig" for k in o):
        problems.append("serverConfigs.enabled=false still renders ServerConfigs")
    if o[("PersistentVolumeClaim", NAMESPACE, "coscale-data")]["spec"].get("storageClassName") != "fast":
        problems.append("storageClassName=fast not applied")

    for values, expect in (
        ({"scope": "everywhere"}, "'/scope': value must be one of 'cluster', 'namespace'"),
        ({"keda": {"enabld": True}}, "additional properties 'enabld' not allowed"),
        ({"metricsApi": {"insecureSkipTLSVerify": False}}, "needs metricsApi.caBundle"),
    ):
        try:
            render_chart(values)
            problems.append(f"helm render with {values} succeeded; expected an error with {expect!r}")
        except Failure as e:
            if expect not in str(e):
                problems.append(f"helm render with {values}: error {e} lacks {expect!r}")
    fail_if(problems)
    return "scope=namespace in another release namespace, keda off, TLS/CA/cert-manager, storage class, image tag, ServerConfigs off, bad values refused"


# --------------------------------------------------------------------------- docs

def shared_fixtures() -> Path:
    shared = Path(os.environ.get("COSCALE_SHARED", ROOT.parent / "shared"))
    fixtures = shared / "fixtures"
    if not (fixtures / "hpa").is_dir():
        raise Failure(
            f"fixtures folder {fixtures} is missing: check out the repository beside shared/ "
            "or set COSCALE_SHARED to the shared folder"
        )
    return fixtures


def yaml_blocks(markdown: str) -> list[tuple[int, str]]:
    """(line number, text) of every ```yaml fenced block."""
    blocks = []
    lines = markdown.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if re.match(r"^```ya?ml\s*$", lines[i]):
            start = i + 1
            j = start
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if j == len(lines):
                raise Failure(f"docs/kubernetes.md:{i + 1}: unterminated ```yaml block")
            blocks.append((start + 1, "".join(lines[start:j])))
            i = j
        i += 1
    return blocks


def check_docs(base: list[dict]) -> str:
    doc = ROOT / "docs" / "kubernetes.md"
    if not doc.is_file():
        raise Failure("docs/kubernetes.md is missing")
    text = doc.read_text()
    blocks = yaml_blocks(text)
    problems: list[str] = []
    service = {key(o): o for o in base}.get(("Service", NAMESPACE, "coscale-control"), {})
    keda_port = {p["name"]: p["port"] for p in service.get("spec", {}).get("ports", [])}.get("keda")
    scaler = f"coscale-control.{NAMESPACE}:{keda_port}"
    counted = {"objects": 0, "values": 0, "scaledobjects": 0}
    for line, block in blocks:
        where = f"docs/kubernetes.md:{line}"
        if block.startswith("# helm values"):
            try:
                values = yaml.safe_load(block) or {}
                validate_objects(render_chart(values), f"{where} (helm values)")
                counted["values"] += 1
            except Failure as e:
                problems.append(str(e))
            continue
        try:
            objects = load_all(block, where)
        except Failure as e:
            problems.append(str(e))
            continue
        standard = []
        for obj in objects:
            if obj.get("apiVersion") == "keda.sh/v1alpha1" and obj.get("kind") == "ScaledObject":
                problems += check_scaled_object(obj, where, scaler)
                counted["scaledobjects"] += 1
            else:
                standard.append(obj)
        try:
            validate_objects(standard, where)
        except Failure as e:
            problems.append(str(e))
        counted["objects"] += len(standard)

    for path in sorted(set(re.findall(r"(?<![\w/.-])((?:deploy|docs|crates|\.ci)/[\w./-]*[\w])", text))):
        if path.startswith("deploy/coscale-"):
            continue  # kubectl's deploy/NAME (a Deployment), not a path
        if not (ROOT / path).exists():
            problems.append(f"docs/kubernetes.md names {path}, which does not exist")

    fixtures = shared_fixtures()
    wanted = sorted((fixtures / "hpa").glob("*.yaml")) + [
        fixtures / "seldon-manifests" / "servers-mlserver1.yaml",
        fixtures / "seldon-manifests" / "models-sklearn-iris-local.yaml",
    ]
    bodies = [b for _, b in blocks]
    for f in wanted:
        body = f.read_text()
        if not any(body.strip() in b for b in bodies):
            problems.append(f"docs/kubernetes.md does not show {f.relative_to(fixtures.parent)} verbatim in a ```yaml block")
    fail_if(problems)
    return (
        f"{len(blocks)} yaml blocks: {counted['objects']} objects, {counted['scaledobjects']} ScaledObjects, "
        f"{counted['values']} helm values; {len(wanted)} fixtures shown verbatim"
    )


def served_metrics() -> set[str]:
    """The metric names the control plane serves (MetricName::ALL in metrics_store.rs)."""
    source = (ROOT / "crates" / "coscale-control" / "src" / "metrics_store.rs").read_text()
    names = set(re.findall(r'\("([a-z_]+)", MetricName::', source))
    if not names:
        raise Failure("no MetricName::ALL table found in crates/coscale-control/src/metrics_store.rs")
    return names


def check_scaled_object(obj: dict, where: str, scaler: str) -> list[str]:
    """KEDA's ScaledObject has no schema here: the fields coscale's scaler needs."""
    problems = []
    metrics = served_metrics()
    what = f"{where}: ScaledObject {obj.get('metadata', {}).get('name')}"
    target = obj.get("spec", {}).get("scaleTargetRef", {})
    if target.get("apiVersion") != SELDON_API or target.get("kind") not in ("Model", "Server") or not target.get("name"):
        problems.append(f"{what}: scaleTargetRef must name a {SELDON_API} Model or Server, found {target}")
    triggers = obj.get("spec", {}).get("triggers", [])
    if not triggers:
        problems.append(f"{what}: no triggers")
    for t in triggers:
        md = t.get("metadata", {})
        if t.get("type") != "external":
            problems.append(f"{what}: trigger type {t.get('type')!r}, coscale's scaler is `external`")
        if md.get("scalerAddress") != scaler:
            problems.append(f"{what}: scalerAddress {md.get('scalerAddress')!r} != {scaler!r} (Service coscale-control, port keda)")
        if md.get("metric") not in metrics:
            problems.append(f"{what}: metric {md.get('metric')!r} is not one of {sorted(metrics)}")
        if not md.get("model"):
            problems.append(f"{what}: metadata.model is required")
        if not isinstance(md.get("target"), str) or not re.fullmatch(r"\d+(\.\d+)?", md["target"]):
            problems.append(f"{what}: metadata.target must be a quoted number, found {md.get('target')!r}")
    return problems


# --------------------------------------------------------------------------- Dockerfile

def check_dockerfile() -> str:
    dockerfile = ROOT / "Dockerfile"
    problems: list[str] = []
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run([str(hadolint), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"hadolint:\n{(out.stdout + out.stderr).strip()}")
    text = dockerfile.read_text()
    joined = re.sub(r"\\\n", " ", text)
    froms = re.findall(r"^FROM\s+(\S+)", joined, re.M)
    if froms != ["rust:1-bookworm", "debian:bookworm-slim"]:
        problems.append(f"Dockerfile stages {froms}, expected rust:1-bookworm then debian:bookworm-slim")
    build = re.search(r"cargo build --release --locked -p (\S+)", joined)
    package = build.group(1) if build else None
    members = {}
    for manifest in (ROOT / "crates").glob("*/Cargo.toml"):
        with open(manifest, "rb") as f:
            data = tomllib.load(f)
        members[data["package"]["name"]] = data
    if package not in members:
        problems.append(f"Dockerfile builds package {package!r}, not a workspace member ({sorted(members)})")
    else:
        bins = [b["name"] for b in members[package].get("bin", [])] or [package]
        if "coscale" not in bins:
            problems.append(f"package {package} has binaries {bins}, no `coscale`")
    if "target/release/coscale " not in joined:
        problems.append("Dockerfile does not take target/release/coscale from the build")
    if not re.search(r'^ENTRYPOINT \["coscale"\]', text, re.M):
        problems.append('Dockerfile ENTRYPOINT is not ["coscale"]')
    if "COPY --from=build /out/coscale /usr/local/bin/coscale" not in text:
        problems.append("the runtime stage must install the binary as /usr/local/bin/coscale (on PATH)")
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not user or user[-1].split(":")[0] in ("0", "root"):
        problems.append(f"the runtime stage must run as a non-root user, USER is {user}")
    elif user[-1] != "10001:10001":
        problems.append(f"USER {user[-1]} does not match runAsUser/runAsGroup 10001 of deploy/")
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for src in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for path in src.split():
            if not (ROOT / path).exists():
                problems.append(f"Dockerfile copies {path}, which does not exist")
            elif dockerignored(path, ignore):
                problems.append(f"Dockerfile copies {path}, which .dockerignore excludes")
    if "--locked" in joined:
        out = subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1"], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"the image builds with --locked but Cargo.lock is not up to date:\n{out.stderr.strip()}")
    tracked = subprocess.run(["git", "ls-files", "Cargo.toml", "Cargo.lock", "crates"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0 or not tracked.stdout.strip():
        problems.append(f"git ls-files found no sources to check .dockerignore against: {tracked.stderr.strip()}")
    excluded = [f for f in tracked.stdout.splitlines() if dockerignored(f, ignore)]
    if excluded:
        problems.append(f".dockerignore excludes {len(excluded)} files the build reads, e.g. {excluded[:3]}")
    fail_if(problems)
    return f"hadolint clean; builds -p {package} → coscale, runs as 10001"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes, `**` spans folders,
    and a pattern that matches a folder excludes everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pat):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


# --------------------------------------------------------------------------- self-test

def check_self_test(base: list[dict]) -> str:
    """The validators reject broken objects, so a passing run means something."""
    by = {key(o): o for o in base}
    problems = []
    broken = copy.deepcopy(by[("Deployment", NAMESPACE, "coscale-control")])
    broken["spec"]["replicas"] = "one"
    if not kube_validate(broken, "self-test"):
        problems.append("kubernetes-validate accepted replicas: \"one\"")
    broken = copy.deepcopy(by[("Deployment", NAMESPACE, "coscale-operator")])
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    if not kube_validate(broken, "self-test"):
        problems.append("kubernetes-validate --strict accepted an unknown container field")
    sc = copy.deepcopy(by[("ServerConfig", NAMESPACE, "mlserver")])
    sc["spec"]["podSpec"]["containers"][1]["port"] = 8080
    if not kube_validate(pod_of(sc), "self-test"):
        problems.append("the ServerConfig podSpec check accepted containers[].port")
    model = {"apiVersion": SELDON_API, "kind": "Model", "metadata": {"name": "iris"},
             "spec": {"storageUri": "/mnt/models/iris", "replica": 2}}
    if not coscale_validate([model], "self-test"):
        problems.append("coscale validate accepted a Model with spec.replica")
    schema = structural({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "replicas": {"type": "integer", "nullable": True},
        "port": {"x-kubernetes-int-or-string": True},
        "podSpec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}, root=True)
    def schema_errors(spec: dict) -> int:
        obj = {"apiVersion": "a/v1", "kind": "K", "metadata": {"name": "x", "labels": {"a": "b"}}, "spec": spec}
        return len(list(jsonschema.Draft7Validator(schema).iter_errors(obj)))
    if schema_errors({"replicas": None, "port": "http", "podSpec": {"anything": 1}}) != 0:
        problems.append("the CRD schema check rejected nullable, int-or-string or preserved fields")
    branchy = structural({"type": "object", "properties": {"spec": {"type": "object",
        "properties": {"type": {"type": "string"}, "a": {"type": "integer"}, "b": {"type": "integer"}},
        "anyOf": [{"properties": {"a": {"minimum": 1}}}, {"required": ["b"]}]}}}, root=True)
    ok_obj = {"apiVersion": "a/v1", "kind": "K", "metadata": {}, "spec": {"type": "x", "a": 2, "b": 0}}
    if list(jsonschema.Draft7Validator(branchy).iter_errors(ok_obj)):
        problems.append("the CRD schema check treats anyOf branches or a field named `type` as declarations")
    if schema_errors({"replicas": "two", "port": 1.5, "replica": 1}) != 3:
        problems.append("the CRD schema check missed a wrong type, a non-int-or-string or an unknown field")
    changed = copy.deepcopy(base)
    for o in changed:
        if key(o) == ("Service", NAMESPACE, "coscale-control"):
            o["spec"]["ports"][0]["port"] = 9999
    if not compare_sets(base, changed, "self-test"):
        problems.append("the kustomize/helm comparison missed a changed port")
    if not dockerignored("target/release/coscale", ["**/target"]) or dockerignored("crates/x/README.md", ["*.md", "!crates/**/*.md"]):
        problems.append("the .dockerignore matcher is wrong")
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
              "spec": {"scaleTargetRef": {"apiVersion": SELDON_API, "kind": "Model", "name": "iris"},
                       "triggers": [{"type": "external", "metadata": {"scalerAddress": "coscale-control:9006", "model": "iris", "metric": "infer_rps", "target": 10}}]}}
    if len(check_scaled_object(scaled, "self-test", f"coscale-control.{NAMESPACE}:9006")) != 2:
        problems.append("the ScaledObject check missed a wrong scalerAddress and an unquoted target")
    fail_if(problems)
    return "broken objects are rejected by every validator used above"


# --------------------------------------------------------------------------- main

def main() -> int:
    checks = Checks()
    if not checks.run("CRDs in deploy/crds and deploy/helm/coscale/crds", check_crds_present):
        print(f"{checks.passed} passed, {checks.failed} failed")
        return 1
    overlays = [DEPLOY / "kustomize" / "base"] + sorted(
        p for p in (DEPLOY / "kustomize" / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
    )
    rendered: dict[str, list[dict]] = {}
    for directory in overlays:
        name = directory.name
        where = str(directory.relative_to(ROOT))

        def build(directory: Path = directory, name: str = name) -> str:
            rendered[name] = kustomize(directory)
            return f"{len(rendered[name])} objects"

        if checks.run(f"kubectl kustomize {where}", build):
            objs = rendered[name]
            checks.run(f"validate {where}", lambda objs=objs, where=where: validate_objects(objs, where))
            checks.run(f"contract {where}", lambda objs=objs, where=where, name=name: check_contract(objs, where, name))
    checks.run("helm lint deploy/helm/coscale", check_helm_lint)
    if "base" in rendered:
        base = rendered["base"]
        checks.run("helm defaults == kustomize base", lambda: fail_if(compare_sets(base, render_chart(), "helm defaults vs base")) or "same kinds, names and specs")
        if "no-metrics-api" in rendered:
            checks.run(
                "helm metricsApi.enabled=false == kustomize no-metrics-api",
                lambda: fail_if(compare_sets(rendered["no-metrics-api"], render_chart({"metricsApi": {"enabled": False}}), "helm metricsApi off vs overlay")) or "same kinds, names and specs",
            )
        checks.run("helm defaults validate", lambda: validate_objects(render_chart(), "helm defaults"))
        checks.run("helm options", check_helm_variants)
        checks.run("docs/kubernetes.md examples", lambda: check_docs(base))
        checks.run("validators reject broken input", lambda: check_self_test(base))
    checks.run("Dockerfile", check_dockerfile)
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
