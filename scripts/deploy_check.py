#!/usr/bin/env python3
"""Checks every file a platform team would install, and renders the generated ones.

  deploy_check.py render   rewrite the generated files under manifests/ from the charts
  deploy_check.py check    fail if anything is invalid or out of sync

check runs: helm lint --strict and helm template of every chart, with default values and with
each ci/*.yaml; validates every rendered document and every file under manifests/ strictly
against the Kubernetes 1.33 OpenAPI schemas (kubernetes-validate); validates ConcordClusters
against our own CRD schema and Prometheus Operator objects against the subset of their schema
we use; compares the CRD in the chart with manifests/crds; compares the generated manifests
(install bundle, monitoring) with a fresh render.

Needs helm on PATH (or $HELM) and the kubernetes-validate package (scripts/deploy-tools.sh).
"""

import copy
import glob
import json
import os
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELM = os.environ.get("HELM", "helm")
KUBE_VERSION = "1.33.0"
OPERATOR_CHART = os.path.join(ROOT, "charts", "concordkv-operator")
CLUSTER_CHART = os.path.join(ROOT, "charts", "concordkv-cluster")
CHARTS = [OPERATOR_CHART, CLUSTER_CHART]
CRD = os.path.join(ROOT, "manifests", "crds", "concordclusters.yaml")
CRDS = sorted(glob.glob(os.path.join(ROOT, "manifests", "crds", "*.yaml")))
INSTALL_NAMESPACE = "concordkv-system"

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}", file=sys.stderr)


def run(args):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def helm_template(chart, release, namespace, values=None, extra=()):
    args = [HELM, "template", release, chart, "--namespace", namespace,
            "--kube-version", KUBE_VERSION, "--include-crds"]
    if values:
        args += ["-f", values]
    args += list(extra)
    return run(args)


# ---------------------------------------------------------------- generated files

def render_install():
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": INSTALL_NAMESPACE}}
    body = helm_template(OPERATOR_CHART, "concordkv-operator", INSTALL_NAMESPACE)
    # helm prints "# Source:" comments; keep them, they say where each object comes from.
    return ("# ConcordKV operator install bundle, rendered from charts/concordkv-operator by\n"
            "# `bash scripts/regen.sh`; do not edit.\n"
            "#   kubectl apply --server-side -f manifests/install.yaml\n---\n"
            + yaml.safe_dump(ns, sort_keys=False) + body)


def alert_rules():
    with open(os.path.join(CLUSTER_CHART, "files", "alerts.yaml")) as f:
        return yaml.safe_load(f)


def render_monitoring():
    rules = alert_rules()
    header = ("# Rendered from charts/concordkv-cluster/files/alerts.yaml by\n"
              "# `bash scripts/regen.sh`; do not edit.\n")
    prometheus_rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "concordkv", "labels": {"app.kubernetes.io/part-of": "concordkv"}},
        "spec": {"groups": [{"name": "concordkv", "rules": rules}]},
    }
    rules_file = {"groups": [{"name": "concordkv", "rules": rules}]}
    with open(os.path.join(CLUSTER_CHART, "files", "dashboard.json")) as f:
        dashboard = f.read()
    return {
        "manifests/monitoring/prometheusrule.yaml": header + yaml.safe_dump(prometheus_rule, sort_keys=False),
        "manifests/monitoring/prometheus/concordkv.rules.yaml": header + yaml.safe_dump(rules_file, sort_keys=False),
        "manifests/monitoring/dashboard.json": dashboard,
    }


def generated():
    files = {"manifests/install.yaml": render_install()}
    files.update(render_monitoring())
    return files


# ---------------------------------------------------------------- schemas

def openapi_to_jsonschema(s):
    """Our CRD's structural schema as strict JSON Schema: nullable, int-or-string, and no
    unknown fields (the API server would silently prune them; we want to see the typo)."""
    if isinstance(s, list):
        return [openapi_to_jsonschema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: openapi_to_jsonschema(v) for k, v in s.items()
           if not k.startswith("x-kubernetes-") and k != "nullable"}
    if s.get("x-kubernetes-int-or-string"):
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("type") == "object" and "properties" in out and not s.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def crd_schema(path):
    """Our CRD at `path` (generated from the Rust types) as a strict JSON Schema for its kind."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    v = docs[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema = openapi_to_jsonschema(copy.deepcopy(v))
    # metadata is the API server's; only apiVersion/kind/metadata/spec/status are allowed.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"const": "concordkv.io/v1alpha1"}
    schema["properties"]["kind"] = {"const": docs[0]["spec"]["names"]["kind"]}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    schema["additionalProperties"] = False
    return schema


def concord_schema():
    """Every kind of ours, by kind."""
    return {crd_schema(p)["properties"]["kind"]["const"]: crd_schema(p) for p in CRDS}


DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}

# The parts of the Prometheus Operator's CRDs that we use, strict about what we write.
PROMETHEUS_RULE = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": META,
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "interval": DURATION, "rules": {"type": "array", "items": {
                    "type": "object", "required": ["alert", "expr"], "additionalProperties": False,
                    "properties": {"alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
                                   "expr": {"type": "string", "minLength": 1}, "for": DURATION,
                                   "labels": LABELS, "annotations": LABELS}}}}}}}},
    },
}
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": META,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
            "selector": {"type": "object", "properties": {"matchLabels": LABELS}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["port"], "additionalProperties": False,
                "properties": {"port": {"type": "string"}, "path": {"type": "string"}, "interval": DURATION,
                               "relabelings": {"type": "array", "items": {
                                   "type": "object", "additionalProperties": False,
                                   "properties": {"action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
                                                  "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                                  "regex": {"type": "string"}, "targetLabel": {"type": "string"},
                                                  "replacement": {"type": "string"}}}}}}}}},
    },
}


def validate_doc(doc, where, concord):
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    try:
        if api == "concordkv.io/v1alpha1":
            if kind not in concord:
                raise ValueError(f"no CRD for {kind}")
            jsonschema.validate(doc, concord[kind])
        elif api == "cert-manager.io/v1":
            # The subsets of cert-manager's schemas the operator's tests also use.
            name = {"Certificate": "certificate", "Issuer": "issuer", "ClusterIssuer": "issuer"}.get(kind)
            if name is None:
                raise ValueError(f"no schema for {kind}")
            path = os.path.join(ROOT, "operator", "schemas", f"cert-manager-{name}-v1.yaml")
            with open(path) as f:
                jsonschema.validate(doc, yaml.safe_load(f))
        elif api == "monitoring.coreos.com/v1":
            schema = {"PrometheusRule": PROMETHEUS_RULE, "ServiceMonitor": SERVICE_MONITOR}.get(kind)
            if schema is None:
                raise ValueError(f"no schema for {kind}")
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except Exception as e:  # noqa: BLE001 - every validator's error is reported the same way
        msg = getattr(e, "message", str(e))
        fail(f"{where}: {kind} {doc.get('metadata', {}).get('name', '?')}: {msg}")


def validate_stream(text, where, concord):
    n = 0
    for doc in yaml.safe_load_all(text):
        if doc:
            validate_doc(doc, where, concord)
            n += 1
    return n


# ---------------------------------------------------------------- check

def check():
    concord = concord_schema()
    objects = 0

    # CRDs: chart copies == manifests copies (== crdgen, checked by the operator's tests).
    for crd in CRDS:
        name = os.path.basename(crd)
        chart_copy = os.path.join(OPERATOR_CHART, "crds", name)
        if not os.path.exists(chart_copy):
            fail(f"charts/concordkv-operator/crds/{name} is missing (bash scripts/regen.sh)")
            continue
        with open(crd) as a, open(chart_copy) as b:
            if a.read() != b.read():
                fail(f"charts/concordkv-operator/crds/{name} differs from manifests/crds/{name}")

    for chart in CHARTS:
        name = os.path.relpath(chart, ROOT)
        value_files = [None] + sorted(glob.glob(os.path.join(chart, "ci", "*.yaml")))
        for values in value_files:
            label = f"{name} ({os.path.basename(values) if values else 'default values'})"
            try:
                run([HELM, "lint", "--strict", chart, "--kube-version", KUBE_VERSION] + (["-f", values] if values else []))
                rendered = helm_template(chart, "ci", "ci-namespace", values)
            except RuntimeError as e:
                fail(f"{label}: {e}")
                continue
            objects += validate_stream(rendered, label, concord)

    # Every YAML file under manifests/ (Prometheus' own rule file is checked as such below).
    for path in sorted(glob.glob(os.path.join(ROOT, "manifests", "**", "*.yaml"), recursive=True)):
        rel = os.path.relpath(path, ROOT)
        with open(path) as f:
            text = f.read()
        if rel.startswith("manifests/monitoring/prometheus/"):
            rules = yaml.safe_load(text)
            wrapped = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                       "metadata": {"name": "rules-file"}, "spec": rules}
            validate_doc(wrapped, rel, concord)
            continue
        objects += validate_stream(text, rel, concord)

    for path in sorted(glob.glob(os.path.join(ROOT, "**", "dashboard.json"), recursive=True)):
        if "/target/" in path:
            continue
        with open(path) as f:
            d = json.load(f)
        if not d.get("panels") or not all(p.get("targets") for p in d["panels"]):
            fail(f"{os.path.relpath(path, ROOT)}: a dashboard needs panels with queries")

    # Generated files in sync with a fresh render.
    for rel, text in generated().items():
        path = os.path.join(ROOT, rel)
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            fail(f"{rel} is out of date: run `bash scripts/regen.sh`")

    if failures:
        print(f"deploy check: {len(failures)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print(f"deploy check: {len(CHARTS)} charts linted and rendered, {objects} objects validated against Kubernetes {KUBE_VERSION}, generated manifests in sync")


def render():
    for rel, text in generated().items():
        path = os.path.join(ROOT, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote {rel}")


if __name__ == "__main__":
    {"render": render, "check": check}.get(sys.argv[1] if len(sys.argv) > 1 else "check", check)()
