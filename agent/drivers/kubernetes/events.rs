//! The Event every Kubernetes action leaves on its target:
//! `Remediated` or `RemediationFailed`.

use k8s_openapi::api::core::v1::{Event as K8sEvent, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, PostParams};

use super::Kube;
use crate::drivers::action::Request;

/// Creates a core/v1 Event on the target: `Remediated` or `RemediationFailed`.
pub(super) async fn event(
    k: &Kube,
    req: &Request,
    kind: &str,
    ok: bool,
    action: &str,
    message: &str,
) {
    let (Some(ns), Some(name)) = (req.target.get("namespace"), req.target.get("name")) else {
        return;
    };
    let (api_version, kind) = match (kind, req.target.get("kind").map(String::as_str)) {
        ("Pod", _) | (_, Some("kubernetes.pod")) => ("v1", "Pod".to_string()),
        ("SparkApplication", _) => ("sparkoperator.k8s.io/v1beta2", "SparkApplication".into()),
        _ => {
            let w = req.target.get("workload").map(|s| s.to_ascii_lowercase());
            let k = match w.as_deref() {
                Some("statefulset") => "StatefulSet",
                Some("daemonset") => "DaemonSet",
                _ => "Deployment",
            };
            ("apps/v1", k.to_string())
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let reason = if ok {
        "Remediated"
    } else {
        "RemediationFailed"
    };
    let ev = K8sEvent {
        metadata: ObjectMeta {
            // A unique name rather than generateName: the same on every API
            // server (and on emulators without generateName).
            name: Some(format!(
                "{name}.remediate.{}",
                uuid::Uuid::now_v7().simple()
            )),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            ..ObjectReference::default()
        },
        reason: Some(reason.into()),
        message: Some(format!("{action}: {}", truncate(message, 900))),
        type_: Some(if ok { "Normal" } else { "Warning" }.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(action.into()),
        reporting_component: Some("remediate".into()),
        reporting_instance: Some(k.holder.clone()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("remediate".into()),
            host: None,
        }),
        ..K8sEvent::default()
    };
    if let Err(e) = Api::<K8sEvent>::namespaced(k.client.clone(), ns)
        .create(&PostParams::default(), &ev)
        .await
    {
        tracing::warn!(error = %e, "cannot create the Kubernetes Event for {action} on {ns}/{name}");
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
