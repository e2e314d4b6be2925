//! What the scale benches share: the two policies (limiting and
//! permissive), the pod count and the 200 playbooks' text.
#![allow(dead_code)]

/// Cooldown, rate limits and a breaker: most decisions suppressed.
pub const LIMITING: &str = r#"apiVersion: remediate/v1
kind: Policy
metadata: { name: default }
spec:
  rateLimits:
    - { scope: global,   max: 30, per: 1h }
    - { scope: playbook, max: 10, per: 1h }
    - { scope: target,   max: 3,  per: 1h }
  cooldown: 10m
  circuitBreaker: { failures: 3, within: 1h, openFor: 6h }
"#;

/// The same limits, checked and never reached: every decision executes.
pub const PERMISSIVE: &str = r#"apiVersion: remediate/v1
kind: Policy
metadata: { name: default }
spec:
  rateLimits:
    - { scope: global,   max: 100000000, per: 1h }
    - { scope: playbook, max: 100000000, per: 1h }
    - { scope: target,   max: 100000000, per: 1h }
  circuitBreaker: { failures: 3, within: 1h, openFor: 6h }
"#;

/// Distinct pods the alerts are spread over.
pub const PODS: usize = 20_000;

/// Playbook `pb-{i}`: 180 keyed on an alertname, 20 on other labels.
pub fn playbook(i: usize) -> String {
    let trigger = if i < 180 {
        format!(r#"['alertname="Alert{i}"', 'namespace!~"kube-system|kube-public"']"#)
    } else {
        format!(r#"['team=~"team-{i}|other"', 'severity="critical"']"#)
    };
    format!(
        "apiVersion: remediate/v1\nkind: Playbook\nmetadata: {{ name: pb-{i} }}\nspec:\n  triggers: [{{ alert: {trigger} }}]\n  target: {{ kind: kubernetes.pod, namespace: \"{{{{ labels.namespace }}}}\", name: \"{{{{ labels.pod }}}}\" }}\n  steps: [{{ action: kubernetes.pod.restart, with: {{ mode: evict }} }}]\n"
    )
}
