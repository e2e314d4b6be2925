//! A local HTTP receiver standing in for Slack, Discord and webhook sinks:
//! it records every request's path and JSON body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::eventually;

/// What the stand-in for Slack and Discord received: (path, JSON body);
/// requests other than POST keyed "METHOD path".
#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<(String, Value)>>>,
    pub url: String,
}

impl Receiver {
    pub async fn start() -> Self {
        let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let g = got.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| {
                let g = g.clone();
                async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    // POSTs by path; other methods as "METHOD path".
                    let key = if method == axum::http::Method::POST {
                        uri.path().to_string()
                    } else {
                        format!("{method} {}", uri.path())
                    };
                    g.lock().unwrap().push((key, v));
                    "ok"
                }
            },
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Self { got, url }
    }

    /// Waits for the first body posted to `path` that `f` accepts.
    pub async fn wait(&self, path: &str, f: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(10), || {
            self.got
                .lock()
                .unwrap()
                .iter()
                .find(|(p, v)| p == path && f(v))
                .map(|(_, v)| v.clone())
        })
        .await
        .unwrap_or_else(|| panic!("nothing for {path}: {:#?}", self.got.lock().unwrap()))
    }

    pub fn count(&self, path: &str) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }
}
