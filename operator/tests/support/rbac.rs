//! The chart's RBAC rules, enforced by the fake API server as a real one
//! would: a request the operator's Roles do not grant is answered 403 and
//! recorded, and [`assert_granted`] fails every test that made one. So the
//! chart's verbs cannot fall behind what the code calls.

use std::sync::Mutex;

/// One rule: API groups, resources (with `/subresource`), verbs.
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

/// Every request the chart's rules refused, in any test of this binary.
static REFUSED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The rules of every Role and ClusterRole the chart gives the operator:
/// each `- apiGroups: [...]` item with its `resources:` and `verbs:` lines.
fn rules() -> Vec<Rule> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/raft-operator/templates"
    );
    let mut out = Vec::new();
    for file in ["_helpers.tpl", "rbac.yaml"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, l) in lines.iter().enumerate() {
            let Some(groups) = l.strip_prefix("- apiGroups:") else {
                continue;
            };
            let list = |s: &str| -> Vec<String> { serde_json::from_str(s.trim()).unwrap() };
            let field = |key: &str| {
                lines[i + 1..]
                    .iter()
                    .take(2)
                    .find_map(|l| l.strip_prefix(key))
                    .map(list)
                    .unwrap_or_else(|| panic!("{file}: rule at line {} has no {key}", i + 1))
            };
            out.push(Rule {
                groups: list(groups),
                resources: field("resources:"),
                verbs: field("verbs:"),
            });
        }
    }
    assert!(out.len() >= 10, "read {} rules from the chart", out.len());
    out
}

/// The (group, resource, verb) a request needs, as the API server reads it.
fn needs(method: &str, path: &str, query: &str) -> (String, String, String) {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match seg.as_slice() {
        ["api", _v, rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => panic!("not an API path: {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, name) = match rest {
        [r] => (r.to_string(), None),
        [r, n] => (r.to_string(), Some(*n)),
        [r, n, sub] => (format!("{r}/{sub}"), Some(*n)),
        _ => panic!("unexpected API path: {path}"),
    };
    let watch = query
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1");
    let verb = match (method, name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => panic!("unexpected method {method}"),
    };
    (group.to_string(), resource, verb.to_string())
}

/// Whether any of the chart's rules grants `verb` on `group`/`resource`.
fn allows(group: &str, resource: &str, verb: &str) -> bool {
    static RULES: std::sync::OnceLock<Vec<Rule>> = std::sync::OnceLock::new();
    let has = |v: &[String], x: &str| v.iter().any(|e| e == x);
    RULES
        .get_or_init(rules)
        .iter()
        .any(|r| has(&r.groups, group) && has(&r.resources, resource) && has(&r.verbs, verb))
}

/// Whether the chart grants the request; a refusal is recorded.
pub fn granted(method: &str, path: &str, query: &str) -> bool {
    let (group, resource, verb) = needs(method, path, query);
    let ok = allows(&group, &resource, &verb);
    if !ok {
        REFUSED
            .lock()
            .unwrap()
            .push(format!("{verb} {group}/{resource} ({method} {path})"));
    }
    ok
}

/// Fails when any request so far was not granted by the chart.
pub fn assert_granted() {
    let refused = REFUSED.lock().unwrap();
    assert!(
        refused.is_empty(),
        "the chart's RBAC does not grant what the operator called: {refused:?}"
    );
}

#[test]
fn requests_map_to_the_verbs_the_api_server_checks() {
    let n = |m, p, q| needs(m, p, q);
    assert_eq!(
        n(
            "GET",
            "/api/v1/namespaces/raft/pods",
            "watch=true&labelSelector=x"
        ),
        ("".into(), "pods".into(), "watch".into())
    );
    assert_eq!(
        n(
            "PATCH",
            "/apis/raftlane.io/v1alpha1/namespaces/raft/raftclusters/demo/status",
            ""
        ),
        (
            "raftlane.io".into(),
            "raftclusters/status".into(),
            "patch".into()
        )
    );
    assert_eq!(
        n("GET", "/apis/storage.k8s.io/v1/storageclasses/standard", ""),
        (
            "storage.k8s.io".into(),
            "storageclasses".into(),
            "get".into()
        )
    );
    assert!(allows("", "secrets", "update") && !allows("", "secrets", "patch"));
    assert!(allows("coordination.k8s.io", "leases", "update"));
}
