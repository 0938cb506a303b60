//! What a container runtime would provide, done for a local process: each
//! volume as a host directory, the environment with its references resolved,
//! and the program an image stands for.
//!
//! An image stands for one binary of this repository, and the binaries built
//! next to it are the rest of the image's files: a container whose `command[0]`
//! names one of those (`/usr/local/bin/raftctl` in the raft-node image, as a
//! backup Job runs it) runs that sibling, so the image's tools run as they would
//! in the real image rather than whatever the host has at that path (see
//! [`program`]).
//!
//! There is no mount or network namespace per pod, so two translations stand
//! in for them, both applied to env values and arguments only:
//! - a value under a volume's `mountPath` is rewritten to that volume's host
//!   directory (`/var/lib/raftlane` → `<pod dir>/volumes/data`);
//! - a listen address on the unspecified address (`0.0.0.0:7000`, `[::]:7000`)
//!   is rewritten to the pod's own IP (`127.1.0.7:7000`), which is what binding
//!   the unspecified address inside a pod's network namespace amounts to.
//!
//! The ServiceAccount volume (`/var/run/secrets/kubernetes.io/serviceaccount`)
//! gets a real token from the TokenRequest API, bound to the pod, the cluster
//! CA and the namespace. kube-rs reads in-cluster credentials from those fixed
//! paths only, so the process also gets `KUBECONFIG` pointing at a kubeconfig
//! next to them that names the same token file, CA and namespace, and
//! `KUBERNETES_SERVICE_HOST`/`_PORT` naming the API server's loopback
//! address (there is no kube-proxy for the `kubernetes` Service's ClusterIP).
//! Either way the process authenticates as the pod's ServiceAccount.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::json;

/// Where kube-rs and client-go look for a pod's ServiceAccount credentials.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A binary this repository builds, standing for an image.
#[derive(Clone, Debug)]
pub struct ImageBinary {
    pub path: PathBuf,
    /// The image's CMD, used when the container gives no args.
    pub default_args: Vec<String>,
}

/// Everything needed to start one container's process.
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The host file behind the container's `terminationMessagePath`
    /// (`/dev/termination-log` by default): what it leaves there becomes its
    /// terminated state's message.
    pub termination_log: PathBuf,
}

/// Why a pod cannot start yet (its PVC is not bound, a Secret is missing):
/// the kubelet tries again on its next pass.
#[derive(Debug)]
pub struct NotYet(pub String);

impl std::fmt::Display for NotYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotYet {}

fn not_yet(why: String) -> anyhow::Error {
    NotYet(why).into()
}

/// What the pod's containers run against.
pub struct Sandbox<'a> {
    pub client: &'a Client,
    pub pod: &'a Pod,
    pub ip: Ipv4Addr,
    pub dir: &'a Path,
    pub node: &'a str,
    pub apiserver_port: u16,
    pub images: &'a BTreeMap<String, ImageBinary>,
}

/// The image's name without registry, tag or digest: `ghcr.io/x/raft-node:1` → `raft-node`.
pub fn image_name(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split(':').next().unwrap_or(last)
}

/// Rewrites mount paths and unspecified listen addresses (see the module docs).
pub fn translate(value: &str, mounts: &[(String, PathBuf)], ip: Ipv4Addr) -> String {
    for prefix in ["0.0.0.0:", "[::]:"] {
        if let Some(port) = value.strip_prefix(prefix) {
            return format!("{ip}:{port}");
        }
    }
    for (mount, host) in mounts {
        if value == mount {
            return host.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(&format!("{mount}/")) {
            return host.join(rest).display().to_string();
        }
    }
    value.to_string()
}

/// The program a container runs, given its `command[0]` (`first`) and the
/// binary `bin` its image stands for:
/// - the image's own binary when `first` names it (`raft-node`,
///   `/usr/local/bin/raft-node`);
/// - a path under a volume mount, translated, since it is a file of that volume;
/// - a binary next to `bin` of the same file name (`/usr/local/bin/raftctl` →
///   `<target dir>/raftctl`), as the image holds this repository's other
///   binaries where the host may hold none or another version (`is_file` is the
///   check, a parameter for tests);
/// - otherwise the host's `first`.
pub fn program(
    first: &str,
    image: &str,
    bin: &Path,
    mounts: &[(String, PathBuf)],
    ip: Ipv4Addr,
    is_file: impl Fn(&Path) -> bool,
) -> PathBuf {
    if image_name(first) == image_name(image) {
        return bin.to_path_buf();
    }
    let translated = translate(first, mounts, ip);
    if translated != first {
        return PathBuf::from(translated);
    }
    let sibling = Path::new(first)
        .file_name()
        .zip(bin.parent())
        .map(|(name, dir)| dir.join(name));
    match sibling {
        Some(s) if is_file(&s) => s,
        _ => PathBuf::from(first),
    }
}

/// Expands `$(VAR)` references to variables defined earlier, as the kubelet does.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (k, v) in env.iter().rev() {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn write_file(dir: &Path, rel: &str, data: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
}

impl Sandbox<'_> {
    fn ns(&self) -> String {
        self.pod.namespace().unwrap_or_default()
    }

    async fn secret(&self, name: &str, optional: bool) -> anyhow::Result<Option<Secret>> {
        let s = Api::<Secret>::namespaced(self.client.clone(), &self.ns())
            .get_opt(name)
            .await?;
        if s.is_none() && !optional {
            return Err(not_yet(format!("Secret {name} not found")));
        }
        Ok(s)
    }

    async fn config_map(&self, name: &str, optional: bool) -> anyhow::Result<Option<ConfigMap>> {
        let c = Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns())
            .get_opt(name)
            .await?;
        if c.is_none() && !optional {
            return Err(not_yet(format!("ConfigMap {name} not found")));
        }
        Ok(c)
    }

    /// The value of a downward-API `fieldPath`.
    fn field(&self, path: &str) -> anyhow::Result<String> {
        let m = &self.pod.metadata;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let label = |map: &Option<BTreeMap<String, String>>, key: &str| {
            map.as_ref()
                .and_then(|l| l.get(key).cloned())
                .unwrap_or_default()
        };
        Ok(match path {
            "metadata.name" => self.pod.name_any(),
            "metadata.namespace" => self.ns(),
            "metadata.uid" => m.uid.clone().unwrap_or_default(),
            "spec.nodeName" => self.node.to_string(),
            "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
            "status.podIP" => self.ip.to_string(),
            "status.podIPs" => self.ip.to_string(),
            "status.hostIP" | "status.hostIPs" => Ipv4Addr::LOCALHOST.to_string(),
            p => {
                if let Some(k) = p
                    .strip_prefix("metadata.labels['")
                    .and_then(|k| k.strip_suffix("']"))
                {
                    label(&m.labels, k)
                } else if let Some(k) = p
                    .strip_prefix("metadata.annotations['")
                    .and_then(|k| k.strip_suffix("']"))
                {
                    label(&m.annotations, k)
                } else {
                    anyhow::bail!("fieldRef {p} is not supported by the process kubelet")
                }
            }
        })
    }

    /// A bound token for the pod's ServiceAccount, from the TokenRequest API.
    async fn token(
        &self,
        audience: Option<&str>,
        expiration: Option<i64>,
    ) -> anyhow::Result<String> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let sa = spec
            .service_account_name
            .unwrap_or_else(|| "default".into());
        let mut body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": expiration.unwrap_or(3607),
                "boundObjectRef": {
                    "apiVersion": "v1", "kind": "Pod",
                    "name": self.pod.name_any(), "uid": self.pod.metadata.uid,
                },
            },
        });
        if let Some(a) = audience {
            body["spec"]["audiences"] = json!([a]);
        }
        let url = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{sa}/token",
            self.ns()
        );
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)?;
        let resp: serde_json::Value = self.client.request(req).await.context("TokenRequest")?;
        resp["status"]["token"]
            .as_str()
            .map(str::to_string)
            .context("TokenRequest answered without a token")
    }

    /// Fills `dir` with one volume's files; returns the directory to mount.
    async fn volume(&self, v: &Volume, dir: &Path) -> anyhow::Result<PathBuf> {
        if let Some(claim) = &v.persistent_volume_claim {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &self.ns());
            let pvc = pvcs
                .get_opt(&claim.claim_name)
                .await?
                .ok_or_else(|| not_yet(format!("PVC {} not found", claim.claim_name)))?;
            let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
            let (true, Some(pv_name)) = (bound, pv_name) else {
                return Err(not_yet(format!(
                    "PVC {} is not bound yet",
                    claim.claim_name
                )));
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return Err(not_yet(format!(
                    "PVC {} is being deleted",
                    claim.claim_name
                )));
            }
            let pv = Api::<PersistentVolume>::all(self.client.clone())
                .get(&pv_name)
                .await?;
            let path = pv
                .spec
                .and_then(|s| s.host_path)
                .map(|h| PathBuf::from(h.path))
                .with_context(|| format!("PV {pv_name} is not a hostPath volume"))?;
            std::fs::create_dir_all(&path)?;
            return Ok(path);
        }
        std::fs::create_dir_all(dir)?;
        if v.empty_dir.is_some() {
            return Ok(dir.to_path_buf());
        }
        if v.downward_api.is_some() {
            self.refresh_downward_api(v, dir)?;
            return Ok(dir.to_path_buf());
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            if let Some(secret) = self.secret(&name, s.optional.unwrap_or(false)).await? {
                let data = secret.data.unwrap_or_default();
                for (key, value) in &data {
                    let path = s
                        .items
                        .iter()
                        .flatten()
                        .find(|i| &i.key == key)
                        .map(|i| i.path.clone());
                    if s.items.is_none() || path.is_some() {
                        write_file(dir, &path.unwrap_or_else(|| key.clone()), &value.0)?;
                    }
                }
            }
            return Ok(dir.to_path_buf());
        }
        if let Some(c) = &v.config_map {
            if let Some(cm) = self
                .config_map(&c.name, c.optional.unwrap_or(false))
                .await?
            {
                for (key, value) in cm.data.unwrap_or_default() {
                    let path = c
                        .items
                        .iter()
                        .flatten()
                        .find(|i| i.key == key)
                        .map(|i| i.path.clone());
                    if c.items.is_none() || path.is_some() {
                        write_file(dir, &path.unwrap_or(key), value.as_bytes())?;
                    }
                }
            }
            return Ok(dir.to_path_buf());
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let token = self
                        .token(t.audience.as_deref(), t.expiration_seconds)
                        .await?;
                    write_file(dir, &t.path, token.as_bytes())?;
                }
                if let Some(c) = &src.config_map {
                    if let Some(cm) = self
                        .config_map(&c.name, c.optional.unwrap_or(false))
                        .await?
                    {
                        let data = cm.data.unwrap_or_default();
                        for i in c.items.iter().flatten() {
                            if let Some(v) = data.get(&i.key) {
                                write_file(dir, &i.path, v.as_bytes())?;
                            }
                        }
                        if c.items.is_none() {
                            for (k, v) in &data {
                                write_file(dir, k, v.as_bytes())?;
                            }
                        }
                    }
                }
                if let Some(s) = &src.secret {
                    if let Some(secret) = self.secret(&s.name, s.optional.unwrap_or(false)).await? {
                        let data = secret.data.unwrap_or_default();
                        for i in s.items.iter().flatten() {
                            if let Some(v) = data.get(&i.key) {
                                write_file(dir, &i.path, &v.0)?;
                            }
                        }
                        if s.items.is_none() {
                            for (k, v) in &data {
                                write_file(dir, k, &v.0)?;
                            }
                        }
                    }
                }
                if let Some(d) = &src.downward_api {
                    for i in d.items.iter().flatten() {
                        if let Some(f) = &i.field_ref {
                            write_file(dir, &i.path, self.field(&f.field_path)?.as_bytes())?;
                        }
                    }
                }
            }
            return Ok(dir.to_path_buf());
        }
        anyhow::bail!(
            "volume {}: this kind of volume is not supported by the process kubelet",
            v.name
        )
    }

    async fn env_var(
        &self,
        e: &EnvVar,
        env: &[(String, String)],
    ) -> anyhow::Result<Option<String>> {
        if let Some(v) = &e.value {
            return Ok(Some(expand(v, env)));
        }
        let Some(from) = &e.value_from else {
            return Ok(Some(String::new()));
        };
        if let Some(f) = &from.field_ref {
            return Ok(Some(self.field(&f.field_path)?));
        }
        if let Some(s) = &from.secret_key_ref {
            let optional = s.optional.unwrap_or(false);
            let secret = self.secret(&s.name, optional).await?;
            let value = secret
                .and_then(|x| x.data)
                .and_then(|d| d.get(&s.key).cloned());
            return match value {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
                None if optional => Ok(None),
                None => Err(not_yet(format!(
                    "key {} of Secret {} not found",
                    s.key, s.name
                ))),
            };
        }
        if let Some(c) = &from.config_map_key_ref {
            let optional = c.optional.unwrap_or(false);
            let cm = self.config_map(&c.name, optional).await?;
            let value = cm.and_then(|x| x.data).and_then(|d| d.get(&c.key).cloned());
            return match value {
                Some(v) => Ok(Some(v)),
                None if optional => Ok(None),
                None => Err(not_yet(format!(
                    "key {} of ConfigMap {} not found",
                    c.key, c.name
                ))),
            };
        }
        anyhow::bail!(
            "env {}: this valueFrom is not supported by the process kubelet",
            e.name
        )
    }

    /// Writes the files of downward-API volume `v` into `dir` from the pod as
    /// it is now; a file whose content is unchanged is left alone.
    fn refresh_downward_api(&self, v: &Volume, dir: &Path) -> anyhow::Result<()> {
        let Some(d) = &v.downward_api else {
            return Ok(());
        };
        for i in d.items.iter().flatten() {
            let Some(f) = &i.field_ref else {
                anyhow::bail!(
                    "volume {}: only fieldRef items are supported by the process kubelet",
                    v.name
                );
            };
            let value = self.field(&f.field_path)?;
            if std::fs::read(dir.join(&i.path)).ok().as_deref() != Some(value.as_bytes()) {
                write_file(dir, &i.path, value.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Brings the pod's downward-API volumes up to date with the pod as it is
    /// now (its annotations change under a running pod), as a kubelet does
    /// when it syncs an updated pod.
    pub fn refresh_downward_api_volumes(&self) -> anyhow::Result<()> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        for v in spec.volumes.iter().flatten() {
            self.refresh_downward_api(v, &self.dir.join("volumes").join(&v.name))?;
        }
        Ok(())
    }

    /// Host directories of every volume, by volume name.
    pub async fn volumes(&self) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let mut out = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            let dir = self.dir.join("volumes").join(&v.name);
            out.insert(v.name.clone(), self.volume(v, &dir).await?);
        }
        Ok(out)
    }

    /// How to start `c`, given the volumes' host directories: its program (see
    /// [`program`]; the image's binary when there is no `command`), args, env
    /// and working directory.
    pub async fn launch(
        &self,
        c: &Container,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> anyhow::Result<Launch> {
        let image = c.image.clone().unwrap_or_default();
        let bin = self.images.get(image_name(&image)).with_context(|| {
            format!("image {image} stands for no binary this repository builds")
        })?;
        // Longest mount path first, so nested mounts win.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let host = volumes
                .get(&m.name)
                .with_context(|| format!("volumeMount {} names no volume", m.name))?;
            let host = match m.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => host.join(sub),
                _ => host.clone(),
            };
            std::fs::create_dir_all(&host)?;
            mounts.push((m.mount_path.trim_end_matches('/').to_string(), host));
        }
        let termination_log = self.dir.join(format!("{}.termination-log", c.name));
        let message_path = c.termination_message_path.as_deref();
        mounts.push((
            message_path.unwrap_or("/dev/termination-log").to_string(),
            termination_log.clone(),
        ));
        mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));

        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOSTNAME".into(), self.pod.name_any()),
            ("HOME".into(), self.dir.display().to_string()),
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.apiserver_port.to_string(),
            ),
        ];
        for e in c.env.iter().flatten() {
            if let Some(v) = self.env_var(e, &env).await? {
                env.retain(|(k, _)| k != &e.name);
                env.push((e.name.clone(), v));
            }
        }
        for (_, v) in env.iter_mut() {
            *v = translate(v, &mounts, self.ip);
        }
        if let Some((_, sa)) = mounts.iter().find(|(m, _)| m == SERVICE_ACCOUNT_DIR) {
            let kubeconfig = self.dir.join(format!("{}.kubeconfig", c.name));
            let server = format!("https://127.0.0.1:{}", self.apiserver_port);
            let ns = std::fs::read_to_string(sa.join("namespace")).unwrap_or_else(|_| self.ns());
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: in-cluster\n  cluster:\n    \
                 server: {server}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    \
                 tokenFile: {}\ncontexts:\n- name: in-cluster\n  context:\n    cluster: in-cluster\n    \
                 user: sa\n    namespace: {ns}\ncurrent-context: in-cluster\n",
                sa.join("ca.crt").display(),
                sa.join("token").display()
            );
            std::fs::write(&kubeconfig, text)?;
            env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        }

        let (program, mut args) = match c.command.as_deref() {
            Some([first, rest @ ..]) => {
                let program = program(first, &image, &bin.path, &mounts, self.ip, Path::is_file);
                (program, rest.to_vec())
            }
            _ => (bin.path.clone(), Vec::new()),
        };
        match (&c.command, &c.args) {
            (_, Some(a)) => args.extend(a.iter().cloned()),
            (None, None) => args.extend(bin.default_args.iter().cloned()),
            _ => {}
        }
        let args = args
            .iter()
            .map(|a| translate(&expand(a, &env), &mounts, self.ip))
            .collect();
        Ok(Launch {
            program,
            args,
            env,
            cwd: self.dir.to_path_buf(),
            termination_log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(image_name("ghcr.io/raftlane/raft-node:0.1.0"), "raft-node");
        assert_eq!(image_name("raftlane/raft-operator:e2e"), "raft-operator");
        assert_eq!(image_name("raft-node"), "raft-node");
        assert_eq!(
            image_name("localhost:5000/raft-node@sha256:abc"),
            "raft-node"
        );
    }

    #[test]
    fn translates_mount_paths_and_unspecified_addresses() {
        let ip = Ipv4Addr::new(127, 1, 0, 9);
        let mounts = vec![("/var/lib/raftlane".to_string(), PathBuf::from("/h/pv1"))];
        assert_eq!(translate("0.0.0.0:7000", &mounts, ip), "127.1.0.9:7000");
        assert_eq!(translate("[::]:7001", &mounts, ip), "127.1.0.9:7001");
        assert_eq!(translate("/var/lib/raftlane", &mounts, ip), "/h/pv1");
        assert_eq!(translate("/var/lib/raftlane/x", &mounts, ip), "/h/pv1/x");
        assert_eq!(
            translate("/var/lib/raftlanex", &mounts, ip),
            "/var/lib/raftlanex"
        );
        assert_eq!(
            translate("e2e-1.e2e-peers.ns.svc:7000", &mounts, ip),
            "e2e-1.e2e-peers.ns.svc:7000"
        );
    }

    #[test]
    fn a_command_runs_the_image_binary_a_sibling_of_it_or_a_host_path() {
        let ip = Ipv4Addr::new(127, 1, 0, 9);
        let bin = Path::new("/t/debug/raft-node");
        let mounts = vec![("/scripts".to_string(), PathBuf::from("/h/cm"))];
        let siblings = |p: &Path| p == Path::new("/t/debug/raftctl");
        let run = |first: &str| program(first, "ghcr.io/x/raft-node:1", bin, &mounts, ip, siblings);
        assert_eq!(run("/usr/local/bin/raft-node"), bin);
        assert_eq!(run("raft-node"), bin);
        assert_eq!(run("/usr/local/bin/raftctl"), Path::new("/t/debug/raftctl"));
        assert_eq!(run("raftctl"), Path::new("/t/debug/raftctl"));
        assert_eq!(run("/bin/sh"), Path::new("/bin/sh"));
        assert_eq!(run("/scripts/raftctl"), Path::new("/h/cm/raftctl"));
    }

    #[test]
    fn expands_earlier_variables() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)", &env), "x-$(B)");
    }
}
