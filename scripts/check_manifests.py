#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests, run by scripts/check-manifests.sh
with the interpreter of .tools/venv (kubernetes-validate, jsonschema, PyYAML).

  k8s --label L -k 1.33 [-k ...] --namespace NS --member-labels RS
      [--values FILE ...] [--set K=V,...] FILE
      Validates every object of a rendered chart with kubernetes-validate in
      strict mode (unknown fields are errors) at each Kubernetes version, then
      cross-checks the objects against each other (selectors, named ports,
      role bindings, service accounts). A kind with no bundled schema fails,
      except the ones in NO_SCHEMA below, which are named on a SKIP line and
      checked against a minimal schema of the fields the chart uses.
      Then the security of the render, against the values it was made with
      (--values files merged in order, then --set): the members' NetworkPolicy
      is rendered when networkPolicy.enabled, in the namespaces it must cover,
      selects member pods by labels the operator sets (read from RS, its
      resources.rs), names the ports 7001, 7002, 7003 and leaves the peer port
      7000 to the operator's per-cluster policy, admits the admin port 7002
      from the operator pods (and the operator's backup Job pods of the
      policy's namespace) only, 7001 from clientFrom and 7003 from
      metricsFrom (default the release namespace); Secrets are granted only to
      roles bound to the operator's ServiceAccount alone; the operator pods
      mount their ServiceAccount token.

  crd CRD EXAMPLES_DIR INVALID_DIR
      Validates examples/*.yaml against the CRD's openAPIV3Schema (with
      Kubernetes' strict field validation: unknown fields are errors), and
      checks that every examples/invalid/*.yaml is rejected, at the field its
      `# expect-error: FIELD` line names and nowhere else. CEL rules
      (x-kubernetes-validations) are not evaluated here: the Rust test
      operator/tests/crd.rs covers them.

  values VALUES_YAML README
      Every key of values.yaml (or one of its parents) has a comment above it,
      and every commented key is listed in the chart README.

Prints one line per check; exits 1 on the first failing command with lines
naming the file, the object and the problem.
"""

import argparse
import copy
import glob
import os
import re
import sys

import jsonschema
import yaml

FAILED = False


def ok(msg):
    print(f"  ok    {msg}")


def skip(msg):
    print(f"  SKIP  {msg}")


def fail(msg):
    global FAILED
    FAILED = True
    print(f"  FAIL  {msg}")


def load_docs(path):
    with open(path) as f:
        try:
            return [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            fail(f"{path}: not YAML: {e}")
            return []


def field_of(err):
    """The dotted field an error is about: its path, plus the property for
    `required` and `additionalProperties` errors."""
    path = ".".join(str(p) for p in err.absolute_path)
    extra = None
    if err.validator == "required":
        m = re.match(r"'([^']+)' is a required property", err.message)
        extra = m.group(1) if m else None
    elif err.validator == "additionalProperties":
        m = re.search(r"\('([^']+)' (was|were) unexpected\)", err.message)
        extra = m.group(1) if m else None
    if extra:
        path = f"{path}.{extra}" if path else extra
    return path or "(root)"


# --------------------------------------------------------------------------
# k8s: rendered chart objects

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}

# Kinds kubernetes-validate has no schema for (it bundles built-in kinds only).
# Each is named on a SKIP line and checked against this minimal schema of the
# fields the chart renders, with unknown fields refused.
_labels = {"type": "object", "additionalProperties": {"type": "string"}}
_duration = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
NO_SCHEMA = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "a prometheus-operator CRD kind, not bundled with kubernetes-validate",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {
                "apiVersion": {"const": "monitoring.coreos.com/v1"},
                "kind": {"const": "ServiceMonitor"},
                "metadata": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "namespace"],
                    "properties": {
                        "name": {"type": "string"},
                        "namespace": {"type": "string"},
                        "labels": _labels,
                        "annotations": _labels,
                    },
                },
                "spec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["selector", "endpoints"],
                    "properties": {
                        "selector": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"matchLabels": _labels},
                        },
                        "namespaceSelector": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "any": {"type": "boolean"},
                                "matchNames": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "endpoints": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["port"],
                                "properties": {
                                    "port": {"type": "string"},
                                    "path": {"type": "string", "pattern": "^/"},
                                    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                    "interval": _duration,
                                    "scrapeTimeout": _duration,
                                },
                            },
                        },
                    },
                },
            },
        },
    ),
}


def ident(o):
    meta = o.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{o.get('kind', '?')}/{ns + '/' if ns else ''}{name}"


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_check(label, objs):
    by_kind = {}
    seen = set()
    for o in objs:
        kind = o["kind"]
        meta = o.get("metadata") or {}
        key = (o["apiVersion"].split("/")[0], kind, meta.get("namespace"), meta.get("name"))
        if key in seen:
            fail(f"{label}: {ident(o)} is rendered twice")
        seen.add(key)
        if kind not in CLUSTER_SCOPED and not meta.get("namespace"):
            fail(f"{label}: {ident(o)} has no metadata.namespace")
        by_kind.setdefault(kind, []).append(o)

    def named(kind, name, ns=None):
        return [o for o in by_kind.get(kind, [])
                if o["metadata"]["name"] == name and (ns is None or o["metadata"].get("namespace") == ns)]

    pods = []  # (namespace, labels, container ports by name, service account)
    for d in by_kind.get("Deployment", []):
        ns = d["metadata"]["namespace"]
        tmpl = d["spec"]["template"]
        labels = tmpl["metadata"].get("labels", {})
        sel = d["spec"]["selector"].get("matchLabels", {})
        if not matches(sel, labels):
            fail(f"{label}: {ident(d)}: selector {sel} does not match its pod labels {labels}")
        else:
            ok(f"{label}: {ident(d)}: selector matches its pod template")
        ports = {p["name"]: p["containerPort"] for c in tmpl["spec"]["containers"] for p in c.get("ports", []) if "name" in p}
        for c in tmpl["spec"]["containers"]:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    fail(f"{label}: {ident(d)}: {probe} uses port {port!r}, not a named container port")
        sa = tmpl["spec"].get("serviceAccountName", "default")
        if not named("ServiceAccount", sa, ns):
            fail(f"{label}: {ident(d)}: ServiceAccount {ns}/{sa} is not rendered")
        else:
            ok(f"{label}: {ident(d)}: runs as rendered ServiceAccount {sa}")
        pods.append((ns, labels, ports))

    for s in by_kind.get("Service", []):
        ns = s["metadata"]["namespace"]
        sel = s["spec"].get("selector", {})
        targets = [p for p in pods if p[0] == ns and matches(sel, p[1])]
        if not targets:
            fail(f"{label}: {ident(s)}: selector {sel} matches no rendered pod template")
            continue
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if isinstance(tp, str) and not all(tp in t[2] for t in targets):
                fail(f"{label}: {ident(s)}: targetPort {tp!r} is not a named port of the selected pods")
        ok(f"{label}: {ident(s)}: selects the operator pods, target ports exist")

    for b in by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", []):
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        if not named(ref["kind"], ref["name"], ns):
            fail(f"{label}: {ident(b)}: roleRef {ref['kind']}/{ref['name']} is not rendered")
            continue
        for sub in b.get("subjects", []):
            if sub["kind"] == "ServiceAccount" and not named("ServiceAccount", sub["name"], sub.get("namespace")):
                fail(f"{label}: {ident(b)}: subject ServiceAccount {sub.get('namespace')}/{sub['name']} is not rendered")
        ok(f"{label}: {ident(b)}: binds rendered {ref['kind']}/{ref['name']} to rendered subjects")

    for m in by_kind.get("ServiceMonitor", []):
        sel = m["spec"]["selector"].get("matchLabels", {})
        nss = (m["spec"].get("namespaceSelector") or {}).get("matchNames") or [m["metadata"]["namespace"]]
        svcs = [s for s in by_kind.get("Service", [])
                if s["metadata"]["namespace"] in nss and matches(sel, s["metadata"].get("labels", {}))]
        if not svcs:
            fail(f"{label}: {ident(m)}: selector {sel} matches no rendered Service in {nss}")
            continue
        for e in m["spec"]["endpoints"]:
            for s in svcs:
                if e["port"] not in [p.get("name") for p in s["spec"]["ports"]]:
                    fail(f"{label}: {ident(m)}: endpoint port {e['port']!r} is not a port name of {ident(s)}")
        ok(f"{label}: {ident(m)}: selects {', '.join(ident(s) for s in svcs)} and its port names")


# --------------------------------------------------------------------------
# k8s: the security of a render (NetworkPolicy, Secrets, the operator's token)

PEER_PORT, CLIENT_PORT, ADMIN_PORT, METRICS_PORT = 7000, 7001, 7002, 7003
# The pods of the operator's backup Jobs (operator/src/k8s/backups.rs), in the
# policy's own namespace: the one other peer the admin port may admit.
BACKUP_JOB_PEER = {"podSelector": {"matchExpressions": [{"key": "raftlane.io/backup-job", "operator": "Exists"}]}}


def chart_values(files, sets):
    """The values a render was made with: the files deep-merged in order, then
    --set KEY=VALUE pairs (dotted keys; true/false and integers as YAML)."""
    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v
    values = {}
    for path in files:
        with open(path) as f:
            merge(values, yaml.safe_load(f) or {})
    for pairs in sets:
        for pair in pairs.split(","):
            key, _, raw = pair.partition("=")
            node = values
            *parents, leaf = key.split(".")
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = yaml.safe_load(raw)
    return values


def operator_member_labels(paths):
    """The label pairs the operator sets on member objects, from the
    `("key".into(), "value".into())` and `l.insert("key".into(), "value".into())`
    lines of operator/src/naming.rs (the selector) and operator/src/k8s/resources.rs."""
    src = ""
    for path in paths:
        with open(path) as f:
            src += f.read()
    return dict(re.findall(r'"([a-z0-9.]+/[a-z0-9-]+)"\.into\(\),\s*"([a-z0-9-]+)"\.into\(\)', src))


def rule_ports(rule):
    return [p.get("port") for p in rule.get("ports") or []]


def security_check(label, objs, args):
    values = chart_values(args.values or [], args.set or [])
    np_values = values.get("networkPolicy") or {}
    watch = values.get("watch") or {}
    release_ns = args.namespace
    if watch.get("allNamespaces"):
        want_ns = sorted(np_values.get("namespaces") or [release_ns])
    else:
        want_ns = [watch.get("namespace") or release_ns]
    enabled = bool(np_values.get("enabled"))

    operators = [d for d in objs if d["kind"] == "Deployment"]
    if len(operators) != 1:
        fail(f"{label}: expected one operator Deployment, rendered {len(operators)}")
        return
    op = operators[0]
    op_labels = op["spec"]["template"]["metadata"].get("labels", {})
    op_ns = op["metadata"]["namespace"]
    member_labels = operator_member_labels(args.member_labels)
    if member_labels.get("app.kubernetes.io/name") != "raft-node":
        fail(f"{label}: {', '.join(args.member_labels)}: no app.kubernetes.io/name=raft-node label found "
             f"(found {member_labels})")
        return

    # The operator pods need their token; members have none (set by the operator).
    pod_spec = op["spec"]["template"]["spec"]
    sa_name = pod_spec.get("serviceAccountName", "default")
    sas = [o for o in objs if o["kind"] == "ServiceAccount"
           and o["metadata"]["name"] == sa_name and o["metadata"].get("namespace") == op_ns]
    if pod_spec.get("automountServiceAccountToken") is False or any(
            sa.get("automountServiceAccountToken") is False and pod_spec.get("automountServiceAccountToken") is not True
            for sa in sas):
        fail(f"{label}: {ident(op)}: the operator pods do not mount their ServiceAccount token")
    else:
        ok(f"{label}: {ident(op)}: the operator pods mount their ServiceAccount token")

    # Secrets: only in roles whose every binding names the operator's SA alone.
    operator_sa = {"kind": "ServiceAccount", "name": sa_name, "namespace": op_ns}
    for r in [o for o in objs if o["kind"] in ("Role", "ClusterRole")]:
        grants = [rule for rule in r.get("rules") or []
                  if set(rule.get("apiGroups") or []) & {"", "*"}
                  and set(rule.get("resources") or []) & {"secrets", "*"}]
        if not grants:
            continue
        ns = r["metadata"].get("namespace")
        bindings = [b for b in objs if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
                    and b["roleRef"]["kind"] == r["kind"] and b["roleRef"]["name"] == r["metadata"]["name"]
                    and (r["kind"] == "ClusterRole" or b["metadata"].get("namespace") == ns)]
        if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in r["metadata"].get("labels") or {}):
            fail(f"{label}: {ident(r)}: grants secrets and aggregates into other roles")
        bad = [b for b in bindings if b.get("subjects") != [operator_sa]]
        if not bindings or bad:
            fail(f"{label}: {ident(r)}: grants secrets but is bound to "
                 f"{[b.get('subjects') for b in bindings] or 'nothing'}, not the operator's ServiceAccount alone")
        else:
            ok(f"{label}: {ident(r)}: secrets granted to ServiceAccount {op_ns}/{sa_name} only")

    # The members' NetworkPolicy.
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    if not enabled:
        if policies:
            fail(f"{label}: networkPolicy.enabled is false but {', '.join(map(ident, policies))} rendered")
        else:
            ok(f"{label}: networkPolicy.enabled=false: no NetworkPolicy rendered")
        return
    got_ns = sorted(p["metadata"]["namespace"] for p in policies)
    if got_ns != want_ns:
        fail(f"{label}: NetworkPolicies rendered in {got_ns or 'no namespace'}, expected one in each of {want_ns}")
    else:
        ok(f"{label}: a NetworkPolicy in each of {want_ns}")

    def operator_only(peer, ns):
        """Is this NetworkPolicyPeer exactly the operator pods?"""
        sel = (peer.get("podSelector") or {})
        if set(peer) - {"podSelector", "namespaceSelector"} or set(sel) != {"matchLabels"}:
            return False
        ml = sel["matchLabels"]
        if not matches(ml, op_labels) or not matches(op["spec"]["selector"]["matchLabels"], ml) \
                or matches(ml, member_labels):
            return False
        want_nss = {"matchLabels": {"kubernetes.io/metadata.name": op_ns}}
        if "namespaceSelector" in peer:
            return peer["namespaceSelector"] == want_nss
        return ns == op_ns

    for p in policies:
        ns = p["metadata"]["namespace"]
        spec = p["spec"]
        sel = (spec.get("podSelector") or {}).get("matchLabels") or {}
        if set(spec.get("podSelector") or {}) != {"matchLabels"} or not matches(sel, member_labels) \
                or sel.get("app.kubernetes.io/name") != "raft-node":
            fail(f"{ident(p)}: podSelector {spec.get('podSelector')} does not select the member pods "
                 f"(labels set by the operator: {member_labels})")
        if spec.get("policyTypes") != ["Ingress"]:
            fail(f"{ident(p)}: policyTypes {spec.get('policyTypes')}, expected [Ingress]")
        rules = spec.get("ingress") or []
        by_port = {}
        for i, rule in enumerate(rules):
            ports = rule_ports(rule)
            if not ports:
                fail(f"{label}: {ident(p)}: ingress[{i}] names no port: it opens every port")
            for pt in rule.get("ports") or []:
                if pt.get("protocol", "TCP") != "TCP" or "endPort" in pt:
                    fail(f"{label}: {ident(p)}: ingress[{i}]: port {pt} is not one TCP port")
            for port in ports:
                if port in by_port:
                    fail(f"{label}: {ident(p)}: port {port} is in two ingress rules")
                by_port[port] = (i, rule)
        named = sorted(map(str, by_port))
        if sorted(by_port, key=str) != [CLIENT_PORT, ADMIN_PORT, METRICS_PORT]:
            fail(f"{label}: {ident(p)}: names ports {named}, expected exactly "
                 f"{CLIENT_PORT}, {ADMIN_PORT}, {METRICS_PORT} (and not the peer port {PEER_PORT}, "
                 f"which the operator's per-cluster policy opens: policies add up)")
            continue
        ok(f"{label}: {ident(p)}: selects members by {sel}; names ports {CLIENT_PORT}, {ADMIN_PORT}, "
           f"{METRICS_PORT}; peer port {PEER_PORT} not opened (left to `<cluster>-peers`)")

        i, admin = by_port[ADMIN_PORT]
        frm = admin.get("from") or []
        ops = [f for f in frm if operator_only(f, ns)]
        jobs = [f for f in frm if f == BACKUP_JOB_PEER]
        if rule_ports(admin) != [ADMIN_PORT] or not ops or len(ops) + len(jobs) != len(frm) or len(jobs) > 1:
            fail(f"{label}: {ident(p)}: admin port {ADMIN_PORT} (ingress[{i}]) is not from the operator "
                 f"pods ({op_ns}, {op['spec']['selector']['matchLabels']}) and at most the backup Job pods "
                 f"of its own namespace ({BACKUP_JOB_PEER}) only: ports {rule_ports(admin)}, from {frm}")
        else:
            also = " and the backup Job pods of its namespace" if jobs else ""
            ok(f"{label}: {ident(p)}: admin port {ADMIN_PORT} from the operator pods in {op_ns}{also} only")

        i, client = by_port[CLIENT_PORT]
        want = np_values.get("clientFrom") or None
        if rule_ports(client) != [CLIENT_PORT] or client.get("from") != want:
            fail(f"{label}: {ident(p)}: client port {CLIENT_PORT} (ingress[{i}]): from {client.get('from')}, "
                 f"expected networkPolicy.clientFrom {want}")
        else:
            ok(f"{label}: {ident(p)}: client port {CLIENT_PORT} from {want or 'anywhere'} (clientFrom)")

        i, metrics = by_port[METRICS_PORT]
        want = np_values.get("metricsFrom") or [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": release_ns}}}]
        if rule_ports(metrics) != [METRICS_PORT] or metrics.get("from") != want:
            fail(f"{label}: {ident(p)}: metrics port {METRICS_PORT} (ingress[{i}]): from {metrics.get('from')}, "
                 f"expected {want} (networkPolicy.metricsFrom, default the release namespace)")
        else:
            ok(f"{label}: {ident(p)}: metrics port {METRICS_PORT} from {want}")


def cmd_k8s(args):
    import kubernetes_validate  # noqa: imported late so `crd` runs without it

    objs = load_docs(args.file)
    if not objs:
        fail(f"{args.label}: {args.file} rendered no objects")
    for o in objs:
        if not isinstance(o, dict) or "apiVersion" not in o or "kind" not in o:
            fail(f"{args.label}: {args.file}: a document is not a Kubernetes object: {str(o)[:80]}")
            continue
        key = (o["apiVersion"], o["kind"])
        if key in NO_SCHEMA:
            reason, schema = NO_SCHEMA[key]
            skip(f"{args.label}: {ident(o)}: kubernetes-validate skipped ({reason}); "
                 f"checked instead against a minimal schema and the objects it selects")
            errs = sorted(jsonschema.Draft7Validator(schema).iter_errors(o), key=lambda e: list(e.path))
            for e in errs:
                fail(f"{args.label}: {ident(o)}: {field_of(e)}: {e.message}")
            if not errs:
                ok(f"{args.label}: {ident(o)}: minimal {o['kind']} schema")
            continue
        passed = []
        for version in args.kube_version:
            try:
                kubernetes_validate.validate(copy.deepcopy(o), version, strict=True)
                passed.append(version)
            except kubernetes_validate.ValidationError as e:
                fail(f"{args.label}: {ident(o)}: Kubernetes {version}: {field_of(e)}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(f"{args.label}: {ident(o)}: {e.message} (add it to NO_SCHEMA in "
                     f"scripts/check_manifests.py with a minimal schema if it is a CRD kind)")
                break
        if passed == args.kube_version:
            ok(f"{args.label}: {ident(o)}: kubernetes-validate --strict, Kubernetes {', '.join(passed)}")
    if not FAILED:
        cross_check(args.label, objs)
    if not FAILED:
        security_check(args.label, objs, args)


# --------------------------------------------------------------------------
# crd: example RaftClusters against the CRD schema


def structural_to_jsonschema(s):
    """A Kubernetes structural schema as a JSON schema (draft 4 keywords), with
    the API server's behaviour: nullable, int-or-string, and strict field
    validation (unknown fields are errors unless preserved)."""
    if not isinstance(s, dict):
        return s
    s = dict(s)
    for key in ("properties", "patternProperties"):
        if key in s:
            s[key] = {k: structural_to_jsonschema(v) for k, v in s[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = structural_to_jsonschema(s[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in s:
            s[key] = [structural_to_jsonschema(v) for v in s[key]]
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}] + s.get("anyOf", [])
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if ("properties" in s and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")):
        s["additionalProperties"] = False
    return s


def cmd_crd(args):
    docs = load_docs(args.crd)
    crd = next((d for d in docs if d.get("kind") == "CustomResourceDefinition"), None)
    if crd is None:
        fail(f"{args.crd}: no CustomResourceDefinition")
        return
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    versions = crd["spec"]["versions"]
    served = {f"{group}/{v['name']}" for v in versions if v.get("served")}
    raw = versions[0]["schema"]["openAPIV3Schema"]
    schema = structural_to_jsonschema(raw)
    # The API server adds these to every object's schema.
    schema["properties"].update({
        "apiVersion": {"type": "string", "enum": sorted(served)},
        "kind": {"type": "string", "enum": [kind]},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
        },
    })
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    jsonschema.Draft4Validator.check_schema(schema)
    validator = jsonschema.Draft4Validator(schema)
    ok(f"{args.crd}: openAPIV3Schema of {versions[0]['name']} is a valid JSON schema")

    def errors(doc):
        return sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))

    good = sorted(glob.glob(os.path.join(args.examples, "*.yaml")))
    if not good:
        fail(f"{args.examples}: no *.yaml examples")
    for path in good:
        for doc in load_docs(path):
            errs = errors(doc)
            for e in errs:
                fail(f"{path}: {field_of(e)}: {e.message}")
            if not errs:
                ok(f"{path}: {ident(doc)} is valid against the CRD schema")

    bad = sorted(glob.glob(os.path.join(args.invalid, "*.yaml")))
    if not bad:
        fail(f"{args.invalid}: no *.yaml manifests that must be rejected")
    for path in bad:
        with open(path) as f:
            m = re.search(r"^# expect-error: *(\S+)", f.read(), re.M)
        if not m:
            fail(f"{path}: no `# expect-error: FIELD` line naming the field it breaks")
            continue
        want = m.group(1)
        docs = load_docs(path)
        if len(docs) != 1:
            fail(f"{path}: must hold exactly one object, holds {len(docs)}")
            continue
        errs = errors(docs[0])
        fields = sorted({field_of(e) for e in errs})
        if not errs:
            fail(f"{path}: ACCEPTED by the CRD schema, but it must be rejected at {want}")
        elif fields != [want]:
            fail(f"{path}: rejected at {fields}, expected only at {want}: "
                 + "; ".join(f"{field_of(e)}: {e.message}" for e in errs))
        else:
            ok(f"{path}: rejected as expected: {want}: {errs[0].message}")


# --------------------------------------------------------------------------
# values: every value documented


def cmd_values(args):
    with open(args.values) as f:
        lines = f.read().splitlines()
    with open(args.readme) as f:
        readme = f.read()
    yaml.safe_load("\n".join(lines))  # must parse
    stack = []  # (indent, key, documented)
    documented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        has_comment = prev.startswith("#")
        path = ".".join([k for _, k, _ in stack] + [key])
        inherited = any(d for _, _, d in stack)
        rest = line[m.end():].strip()
        is_leaf = rest != ""
        if has_comment:
            documented.append(path)
        elif is_leaf and not inherited:
            fail(f"{args.values}:{i + 1}: {path} has no comment above it")
        stack.append((indent, key, has_comment))
    for path in documented:
        if f"`{path}`" not in readme:
            fail(f"{args.readme}: value `{path}` of {args.values} is not listed")
    if not FAILED:
        ok(f"{args.values}: {len(documented)} values, each commented and listed in {args.readme}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("k8s")
    k.add_argument("--label", required=True)
    k.add_argument("-k", "--kube-version", action="append", required=True)
    k.add_argument("--namespace", required=True, help="the release namespace")
    k.add_argument("--member-labels", required=True, nargs="+",
                   help="operator/src/naming.rs and operator/src/k8s/resources.rs")
    k.add_argument("--values", action="append", help="values files of the render, in order")
    k.add_argument("--set", action="append", help="--set pairs of the render")
    k.add_argument("file")
    c = sub.add_parser("crd")
    c.add_argument("crd")
    c.add_argument("examples")
    c.add_argument("invalid")
    v = sub.add_parser("values")
    v.add_argument("values")
    v.add_argument("readme")
    args = p.parse_args()
    {"k8s": cmd_k8s, "crd": cmd_crd, "values": cmd_values}[args.cmd](args)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
