//! A real Kubernetes control plane on this machine, with no containers:
//! etcd, kube-apiserver and kube-controller-manager built from their Go
//! modules (scripts/controlplane.sh), run as local processes on loopback
//! ([`servers`]), and a process kubelet ([`kubelet`]) that runs pods as local
//! processes, mapping the images to the binaries this repository builds.
//! [`env`] installs the operator with `kubectl apply -f crds/` and `helm
//! install`; [`target`] implements [`crate::Target`] on it.
//!
//! Pod DNS names (`<pod>.<cluster>-peers.<ns>.svc`) do not resolve here:
//! nothing serves cluster DNS and the harness does not touch /etc/hosts.
//! Members are started exactly as on a real cluster (peers and their own
//! advertised address by stable DNS name) and reach each other once the
//! operator pushes the pod IPs with UpsertPeers, which is what it does on
//! every cluster; the product's behaviour is unchanged, only the window in
//! which a member could dial a peer by name before the push is empty here.

pub mod certs;
pub mod checks;
pub mod env;
pub mod kubectl;
pub mod kubelet;
pub mod process;
pub mod servers;
pub mod target;

pub use env::ControlPlaneEnv;
pub use target::ControlPlaneTarget;
