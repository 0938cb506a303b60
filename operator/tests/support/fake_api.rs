//! A Kubernetes API stand-in on kube's `tower-test` mock service: it keeps the
//! objects of one namespace, answers every request the controller sends, and
//! records each (method, path, body) in order, so a test can assert the exact
//! sequence of requests a reconcile pass made.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One request as the controller sent it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub body: Value,
    /// The status code it was answered with.
    pub status: u16,
}

impl Call {
    /// "METHOD /path", for order assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Default)]
struct State {
    /// Objects by collection path (e.g. `/api/v1/namespaces/ns/pods`) and name.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    calls: Vec<Call>,
    generated: u32,
}

/// The fake API server; cheap to clone, shared with the serving task.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

pub const NS: &str = "raft";

pub fn pods_path() -> String {
    format!("/api/v1/namespaces/{NS}/pods")
}
pub fn claims_path() -> String {
    format!("/api/v1/namespaces/{NS}/persistentvolumeclaims")
}
pub fn services_path() -> String {
    format!("/api/v1/namespaces/{NS}/services")
}
pub fn budgets_path() -> String {
    format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets")
}
pub fn secrets_path() -> String {
    format!("/api/v1/namespaces/{NS}/secrets")
}
pub fn policies_path() -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies")
}
pub fn certificates_path() -> String {
    format!("/apis/cert-manager.io/v1/namespaces/{NS}/certificates")
}
pub fn clusters_path() -> String {
    format!("/apis/raftlane.io/v1alpha1/namespaces/{NS}/raftclusters")
}
/// StorageClasses are cluster-scoped.
pub fn storage_classes_path() -> String {
    "/apis/storage.k8s.io/v1/storageclasses".to_string()
}
// Used by the backup tests only (each test binary compiles the support).
#[allow(dead_code)]
pub fn jobs_path() -> String {
    format!("/apis/batch/v1/namespaces/{NS}/jobs")
}
#[allow(dead_code)]
pub fn backups_path() -> String {
    format!("/apis/raftlane.io/v1alpha1/namespaces/{NS}/raftclusterbackups")
}
pub fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

/// What the API server answers a request RBAC does not grant.
fn forbidden(call: &Call) -> (u16, Value) {
    (
        403,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "Forbidden", "code": 403,
               "message": format!("{} {} is not granted by the chart's RBAC", call.method, call.path)}),
    )
}

fn not_found(name: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "NotFound", "code": 404, "message": format!("{name} not found")}),
    )
}

impl FakeApi {
    /// A client whose every request this fake answers.
    pub fn start() -> (FakeApi, Client) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        let served = api.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("a JSON request body")
                };
                let mut call = Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body,
                    status: 0,
                };
                let (status, reply) = if super::rbac::granted(&call.method, &call.path, &call.query)
                {
                    served.answer(&call)
                } else {
                    forbidden(&call)
                };
                call.status = status;
                served.state.lock().unwrap().calls.push(call);
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        (api, Client::new(svc, NS))
    }

    /// Stores an object as if it had been created earlier.
    pub fn put(&self, collection: &str, obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        self.state
            .lock()
            .unwrap()
            .objects
            .entry(collection.to_string())
            .or_default()
            .insert(name, obj);
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(collection)?
            .get(name)
            .cloned()
    }

    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(collection)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Changes a stored object in place (a kubelet setting a pod's IP).
    pub fn update(&self, collection: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.state.lock().unwrap();
        let obj = s
            .objects
            .get_mut(collection)
            .and_then(|m| m.get_mut(name))
            .unwrap_or_else(|| panic!("{collection}/{name} is not stored"));
        f(obj);
    }

    /// Removes an object behind the controller's back (a user, the kubelet).
    pub fn remove(&self, collection: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        let gone = s.objects.get_mut(collection).and_then(|m| m.remove(name));
        assert!(gone.is_some(), "{collection}/{name} is not stored");
    }

    /// The requests since the last call, in order.
    /// The calls so far; fails when any call of this test binary was one
    /// the chart's RBAC does not grant.
    pub fn take_calls(&self) -> Vec<Call> {
        super::rbac::assert_granted();
        std::mem::take(&mut self.state.lock().unwrap().calls)
    }

    fn answer(&self, call: &Call) -> (u16, Value) {
        let mut s = self.state.lock().unwrap();
        let path = call.path.strip_suffix("/status").unwrap_or(&call.path);
        let (collection, name) = if is_collection(path) {
            (path.to_string(), None)
        } else {
            let (head, last) = path.rsplit_once('/').expect("an object path");
            (head.to_string(), Some(last.to_string()))
        };
        let objects = s.objects.entry(collection.clone()).or_default();
        match (call.method.as_str(), name) {
            ("GET", None) => {
                let wanted = label_selector(&call.query);
                let items: Vec<Value> = objects
                    .values()
                    .filter(|o| {
                        wanted
                            .iter()
                            .all(|(k, v)| o["metadata"]["labels"][k].as_str() == Some(v))
                    })
                    .cloned()
                    .collect();
                (
                    200,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}),
                )
            }
            ("GET", Some(n)) => match objects.get(&n) {
                Some(o) => (200, o.clone()),
                None => not_found(&n),
            },
            ("POST", _) => {
                let mut obj = call.body.clone();
                if obj["metadata"]["name"].is_null() {
                    let prefix = obj["metadata"]["generateName"].as_str().unwrap_or("obj-");
                    s.generated += 1;
                    obj["metadata"]["name"] = json!(format!("{prefix}{}", s.generated));
                }
                let n = obj["metadata"]["name"].as_str().unwrap().to_string();
                obj["metadata"]["uid"] = json!(format!("uid-{n}"));
                obj["metadata"]["resourceVersion"] = json!("1");
                obj["metadata"]["namespace"] = json!(NS);
                let objects = s.objects.entry(collection).or_default();
                if objects.contains_key(&n) {
                    return (
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "AlreadyExists", "code": 409, "message": "exists"}),
                    );
                }
                objects.insert(n, obj.clone());
                (201, obj)
            }
            // A replace succeeds only on the version it was read at.
            ("PUT", Some(n)) => {
                let Some(stored) = objects.get_mut(&n) else {
                    return not_found(&n);
                };
                let version = &stored["metadata"]["resourceVersion"];
                if call.body["metadata"]["resourceVersion"] != *version {
                    return (
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "Conflict", "code": 409, "message": "modified"}),
                    );
                }
                let next = version.as_str().unwrap_or("0").parse::<u64>().unwrap() + 1;
                *stored = call.body.clone();
                stored["metadata"]["resourceVersion"] = json!(next.to_string());
                (200, stored.clone())
            }
            ("DELETE", Some(n)) => match objects.remove(&n) {
                Some(o) => (200, o),
                None => not_found(&n),
            },
            ("PATCH", Some(n)) => {
                let Some(obj) = objects.get_mut(&n) else {
                    return not_found(&n);
                };
                if call.path.ends_with("/status") {
                    obj["status"] = call.body["status"].clone();
                } else if call.body.is_array() {
                    json_patch_finalizers(obj, &call.body);
                } else {
                    merge(obj, &call.body);
                }
                (200, obj.clone())
            }
            (m, n) => panic!("the fake API does not serve {m} {collection} {n:?}"),
        }
    }
}

/// The `k=v` terms of a list call's labelSelector (the only form sent).
fn label_selector(query: &str) -> Vec<(String, String)> {
    let Some(sel) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
    else {
        return Vec::new();
    };
    percent_decode(sel)
        .split(',')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("a %XX escape"));
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

/// Paths that name a collection, not an object.
fn is_collection(path: &str) -> bool {
    [
        "pods",
        "persistentvolumeclaims",
        "services",
        "poddisruptionbudgets",
        "events",
        "raftclusters",
        "leases",
        "secrets",
        "networkpolicies",
        "certificates",
        "storageclasses",
        "jobs",
        "raftclusterbackups",
    ]
    .iter()
    .any(|c| path.ends_with(&format!("/{c}")))
}

/// The two JSON patches kube's finalizer helper sends: add or remove ours.
fn json_patch_finalizers(obj: &mut Value, ops: &Value) {
    for op in ops.as_array().unwrap() {
        match op["op"].as_str() {
            Some("add") if op["path"] == "/metadata/finalizers" => {
                obj["metadata"]["finalizers"] = op["value"].clone()
            }
            Some("add") => obj["metadata"]["finalizers"]
                .as_array_mut()
                .unwrap()
                .push(op["value"].clone()),
            Some("remove") => {
                let i: usize = op["path"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                obj["metadata"]["finalizers"]
                    .as_array_mut()
                    .unwrap()
                    .remove(i);
            }
            _ => {}
        }
    }
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}
