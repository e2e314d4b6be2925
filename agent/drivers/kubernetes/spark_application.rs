//! `spark.executor.bump-memory` for spark-operator SparkApplications: the
//! Kubernetes route of the action (see [`crate::drivers::spark`]).

use std::sync::Arc;

use async_trait::async_trait;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::json;

use super::events::event;
use super::{api_err, Kube};
use crate::drivers::action::{Action, DriverError, Outcome, Plan, Request, Scope, Verdict};
use crate::drivers::spark::{spark_memory, BumpMemory, SPEC};
use crate::units::ByteSize;

/// `spark.executor.bump-memory` for `sparkoperator.k8s.io/v1beta2` SparkApplications.
#[derive(Debug)]
pub struct SparkApplicationBump(pub Arc<Kube>);

fn spark_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("sparkoperator.k8s.io", "v1beta2", "SparkApplication");
    let mut ar = ApiResource::from_gvk(&gvk);
    ar.plural = "sparkapplications".into();
    Api::namespaced_with(client.clone(), ns, &ar)
}

#[async_trait]
impl Action for SparkApplicationBump {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn scope(&self, _: &Request) -> Scope {
        Scope::Cluster
    }
    async fn plan(&self, req: &Request) -> Result<Plan, DriverError> {
        let p: BumpMemory = req.parsed()?;
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let app = spark_api(&self.0.client, ns)
            .get(name)
            .await
            .map_err(|e| api_err(&format!("sparkapplication {ns}/{name}"), e))?;
        let ex = &app.data["spec"]["executor"];
        let mem = ex["memory"].as_str().unwrap_or("1g");
        let (current, new) = p.next(
            mem,
            "spec.executor.memory",
            &format!("sparkapplication {ns}/{name}"),
        )?;
        let mut patch = json!({"spec": {"executor": {"memory": spark_memory(new)}}});
        if p.bump_overhead {
            if let Some(o) = ex["memoryOverhead"].as_str() {
                let o: ByteSize = o.parse().map_err(|e| {
                    DriverError::permanent(format!("spec.executor.memoryOverhead: {e}"))
                })?;
                let scaled = (o.0 as f64 * new as f64 / current as f64).ceil() as u64;
                patch["spec"]["executor"]["memoryOverhead"] = json!(spark_memory(scaled));
            }
        }
        if let Some(c) = &p.cores {
            let cores = ex["cores"].as_u64().unwrap_or(1);
            patch["spec"]["executor"]["cores"] = json!((cores + u64::from(c.step))
                .min(u64::from(c.ceiling))
                .max(cores));
        }
        Ok(Plan {
            summary: format!(
                "raise executor memory of sparkapplication {ns}/{name} from {mem} to {} (ceiling {}); the next run gets it",
                spark_memory(new),
                p.ceiling
            ),
            details: json!({"patch": patch, "resourceVersion": app.metadata.resource_version}),
        })
    }
    async fn apply(&self, req: &Request, plan: &Plan) -> Result<Outcome, DriverError> {
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let mut patch = plan.details["patch"].clone();
        patch["metadata"] = json!({"resourceVersion": plan.details["resourceVersion"]});
        spark_api(&self.0.client, ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_err(&format!("patch sparkapplication {ns}/{name}"), e))?;
        Ok(Outcome {
            summary: format!(
                "sparkapplication {ns}/{name}: executor {}",
                plan.details["patch"]["spec"]["executor"]
            ),
            details: json!({}),
        })
    }
    async fn verify(&self, req: &Request, plan: &Plan) -> Result<Verdict, DriverError> {
        let (ns, name) = (req.field("namespace")?, req.field("name")?);
        let app = spark_api(&self.0.client, ns)
            .get(name)
            .await
            .map_err(|e| api_err(&format!("sparkapplication {ns}/{name}"), e))?;
        let want = &plan.details["patch"]["spec"]["executor"]["memory"];
        if &app.data["spec"]["executor"]["memory"] == want {
            Ok(Verdict::Verified(format!(
                "sparkapplication {ns}/{name} executors get {} from the next run",
                want.as_str().unwrap_or_default()
            )))
        } else {
            Ok(Verdict::Failed(format!(
                "sparkapplication {ns}/{name} has executor memory {} after the patch, expected {want}",
                app.data["spec"]["executor"]["memory"]
            )))
        }
    }
    async fn record(&self, req: &Request, ok: bool, message: &str) {
        event(&self.0, req, "SparkApplication", ok, SPEC.name, message).await;
    }
}
