//! `remediate exec-step`: one phase of a node-scoped step on this host,
//! for an agent elsewhere that reached it over SSH. Always prints one JSON
//! object ([`crate::drivers::host::StepResult`]).

use std::io::Write;

use super::args::ExecStepArgs;
use super::Result;

/// One step on this host for an agent elsewhere; always prints one JSON object.
pub fn exec_step(a: ExecStepArgs, out: &mut dyn Write) -> Result<()> {
    use crate::drivers::host::StepResult;
    let result = (|| -> Result<StepResult, (String, bool)> {
        let target: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&a.target).map_err(|e| (format!("--target: {e}"), false))?;
        let params: serde_json::Value =
            serde_json::from_str(&a.params).map_err(|e| (format!("--params: {e}"), false))?;
        let mut reg = crate::drivers::host::builtin(&a.node);
        if let Ok(docker) = crate::drivers::docker::connect(&Default::default()) {
            crate::drivers::docker::register(
                &mut reg,
                std::sync::Arc::new(crate::drivers::docker::Engine {
                    docker,
                    node: a.node.clone(),
                }),
            );
        }
        let driver = reg
            .get(&a.action)
            .ok_or_else(|| (format!("no driver for {} on this host", a.action), false))?;
        let req = crate::drivers::Request {
            target,
            params,
            dry_run: a.phase == "plan",
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| (e.to_string(), true))?;
        let plan = || -> Result<crate::drivers::Plan, (String, bool)> {
            serde_json::from_str(a.plan.as_deref().unwrap_or("null"))
                .map_err(|e| (format!("--plan: {e}"), false))
        };
        let mut r = StepResult {
            plan: None,
            outcome: None,
            verdict: None,
            error: None,
            retryable: false,
        };
        let err = |e: crate::drivers::DriverError| (e.message, e.retryable);
        match a.phase.as_str() {
            "plan" => r.plan = Some(rt.block_on(driver.plan(&req)).map_err(err)?),
            "apply" => r.outcome = Some(rt.block_on(driver.apply(&req, &plan()?)).map_err(err)?),
            "verify" => r.verdict = Some(rt.block_on(driver.verify(&req, &plan()?)).map_err(err)?),
            other => return Err((format!("--phase {other:?}: plan, apply or verify"), false)),
        }
        Ok(r)
    })();
    let res = match result {
        Ok(r) => r,
        Err((message, retryable)) => StepResult {
            plan: None,
            outcome: None,
            verdict: None,
            error: Some(message),
            retryable,
        },
    };
    outln!(out, "{}", serde_json::to_string(&res).unwrap_or_default());
    Ok(())
}
