//! Where kube-apiserver keeps each resource in etcd: `<prefix>/<dir>/[<namespace>/]<name>`.
//!
//! `<dir>` is the registry's `ResourcePrefix` (k8s.io/kubernetes/pkg/registry/<group>/<resource>/
//! storage/storage.go): for built-in types the plural resource name, with a few historical names
//! kept for compatibility; for custom resources and the aggregation layer's own types
//! `<group>/<plural>` (k8s.io/apiextensions-apiserver/pkg/registry/customresource/etcd.go,
//! k8s.io/kube-aggregator/pkg/registry/apiservice/etcd/etcd.go). Object names and namespaces never
//! hold a `/`, so the segments after `<dir>` tell the scope: one is a cluster-scoped name, two a
//! namespace and a name.

/// Directories whose name is not the resource's plural, or that hold a built-in type of a named
/// API group: `<dir>` → `<plural>[.<group>]` as kubectl names the resource.
const BUILT_IN: &[(&str, &str)] = &[
    // pkg/registry/core/node/storage/storage.go: Nodes kept their pre-1.0 name.
    ("minions", "nodes"),
    // pkg/registry/core/service/storage/storage.go and endpoint/storage/storage.go.
    ("services/specs", "services"),
    ("services/endpoints", "endpoints"),
    // pkg/registry/core/replicationcontroller/storage/storage.go.
    ("controllers", "replicationcontrollers"),
    // pkg/registry/networking/ingress/storage/storage.go.
    ("ingress", "ingresses.networking.k8s.io"),
    ("ingressclasses", "ingressclasses.networking.k8s.io"),
    ("networkpolicies", "networkpolicies.networking.k8s.io"),
    ("deployments", "deployments.apps"),
    ("daemonsets", "daemonsets.apps"),
    ("replicasets", "replicasets.apps"),
    ("statefulsets", "statefulsets.apps"),
    ("controllerrevisions", "controllerrevisions.apps"),
    ("jobs", "jobs.batch"),
    ("cronjobs", "cronjobs.batch"),
    (
        "horizontalpodautoscalers",
        "horizontalpodautoscalers.autoscaling",
    ),
    ("leases", "leases.coordination.k8s.io"),
    ("endpointslices", "endpointslices.discovery.k8s.io"),
    ("poddisruptionbudgets", "poddisruptionbudgets.policy"),
    ("roles", "roles.rbac.authorization.k8s.io"),
    ("rolebindings", "rolebindings.rbac.authorization.k8s.io"),
    ("clusterroles", "clusterroles.rbac.authorization.k8s.io"),
    (
        "clusterrolebindings",
        "clusterrolebindings.rbac.authorization.k8s.io",
    ),
    ("storageclasses", "storageclasses.storage.k8s.io"),
    ("volumeattachments", "volumeattachments.storage.k8s.io"),
    ("csinodes", "csinodes.storage.k8s.io"),
    ("csidrivers", "csidrivers.storage.k8s.io"),
    ("priorityclasses", "priorityclasses.scheduling.k8s.io"),
    ("runtimeclasses", "runtimeclasses.node.k8s.io"),
    (
        "certificatesigningrequests",
        "certificatesigningrequests.certificates.k8s.io",
    ),
    (
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
    ),
    (
        "validatingwebhookconfigurations",
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
    ),
    ("flowschemas", "flowschemas.flowcontrol.apiserver.k8s.io"),
    (
        "prioritylevelconfigurations",
        "prioritylevelconfigurations.flowcontrol.apiserver.k8s.io",
    ),
];

/// Resources that churn by design and say nothing about what a restore brings back: diffs hide
/// them unless asked.
pub const CHURNING: &[&str] = &[
    "events",
    "events.events.k8s.io",
    "leases.coordination.k8s.io",
];

/// Where an object lives, from its etcd key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// `<plural>[.<group>]`, as kubectl names the resource.
    pub resource: String,
    /// `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    pub name: String,
}

/// Normalises `--etcd-prefix` as kube-apiserver does: one leading `/`, no trailing one.
pub fn normalise_prefix(prefix: &str) -> String {
    format!("/{}", prefix.trim_matches('/'))
}

/// The location of the object at etcd key `key` under `prefix` (normalised); `None` for a key
/// outside the prefix or one that names no object (a bare directory, an empty segment).
pub fn locate(prefix: &str, key: &[u8]) -> Option<Location> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let two = segments.get(..2).map(|s| s.join("/"));
    let (resource, dir_len) = match two
        .as_deref()
        .and_then(|dir| BUILT_IN.iter().find(|(d, _)| *d == dir))
    {
        Some((_, resource)) => (resource.to_string(), 2),
        None if segments[0].contains('.') && segments.len() > 2 => {
            (format!("{}.{}", segments[1], segments[0]), 2)
        }
        None => {
            let dir = segments[0];
            let resource = BUILT_IN
                .iter()
                .find(|(d, _)| *d == dir)
                .map_or(dir, |(_, r)| r);
            (resource.to_string(), 1)
        }
    };
    match &segments[dir_len..] {
        [name] => Some(Location {
            resource,
            namespace: None,
            name: name.to_string(),
        }),
        [namespace, name] => Some(Location {
            resource,
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        }),
        _ => None,
    }
}

/// Whether `given` (as an operator types it: `deployments`, `deployments.apps`,
/// `widgets.example.com`) names `resource`.
pub fn names(given: &str, resource: &str) -> bool {
    given == resource
        || resource
            .split_once('.')
            .is_some_and(|(plural, _)| plural == given)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: &str) -> Option<(String, Option<String>, String)> {
        locate("/registry", key.as_bytes()).map(|l| (l.resource, l.namespace, l.name))
    }

    fn loc(
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<(String, Option<String>, String)> {
        Some((resource.into(), namespace.map(String::from), name.into()))
    }

    #[test]
    fn keys_name_resource_scope_and_name() {
        assert_eq!(
            at("/registry/configmaps/kube-system/kube-proxy"),
            loc("configmaps", Some("kube-system"), "kube-proxy")
        );
        assert_eq!(at("/registry/minions/cp0"), loc("nodes", None, "cp0"));
        assert_eq!(
            at("/registry/services/specs/default/kubernetes"),
            loc("services", Some("default"), "kubernetes")
        );
        assert_eq!(
            at("/registry/services/endpoints/default/kubernetes"),
            loc("endpoints", Some("default"), "kubernetes")
        );
        assert_eq!(
            at("/registry/deployments/kube-system/coredns"),
            loc("deployments.apps", Some("kube-system"), "coredns")
        );
        assert_eq!(
            at("/registry/leases/kube-node-lease/cp0"),
            loc("leases.coordination.k8s.io", Some("kube-node-lease"), "cp0")
        );
        assert_eq!(
            at("/registry/apiregistration.k8s.io/apiservices/v1.apps"),
            loc("apiservices.apiregistration.k8s.io", None, "v1.apps")
        );
        assert_eq!(
            at("/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com"),
            loc(
                "customresourcedefinitions.apiextensions.k8s.io",
                None,
                "widgets.example.com"
            )
        );
        assert_eq!(
            at("/registry/example.com/widgets/default/w1"),
            loc("widgets.example.com", Some("default"), "w1")
        );
        assert_eq!(
            at("/registry/example.com/gadgets/g1"),
            loc("gadgets.example.com", None, "g1")
        );
        assert_eq!(
            at("/registry/ranges/serviceips"),
            loc("ranges", None, "serviceips")
        );
    }

    #[test]
    fn keys_outside_the_prefix_or_without_a_name_are_no_objects() {
        assert_eq!(at("compact_rev_key"), None);
        assert_eq!(at("/registryx/pods/a/b"), None);
        assert_eq!(at("/registry/pods"), None);
        assert_eq!(at("/registry/pods//b"), None);
        assert_eq!(at("/registry/a/b/c/d"), None);
        assert_eq!(
            locate(&normalise_prefix("k8s/"), b"/k8s/secrets/default/s").map(|l| l.resource),
            Some("secrets".into())
        );
    }

    #[test]
    fn operators_name_resources_with_or_without_group() {
        assert!(names("deployments", "deployments.apps"));
        assert!(names("deployments.apps", "deployments.apps"));
        assert!(names("widgets.example.com", "widgets.example.com"));
        assert!(!names("deploy", "deployments.apps"));
        assert!(!names("apps", "deployments.apps"));
    }
}
