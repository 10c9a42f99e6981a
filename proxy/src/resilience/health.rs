//! Optional active health checks: a GET of a path on every endpoint at an interval, matching the
//! status and optionally the body (OnlyOffice's `/healthcheck` always answers 200, with body
//! `true` or `false`, so only the body tells). Endpoints start healthy (optimistic) and are taken
//! out after `unhealthy_threshold` failed checks in a row, back in after `healthy_threshold`
//! passed ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Limited};

use super::body::ReplayBody;
use super::endpoint::Endpoint;
use super::policy::HealthCheckPolicy;
use crate::classify::AttemptError;

/// Largest health-check body read.
const MAX_BODY: usize = 4096;

/// Health of one endpoint as seen by the active checker.
#[derive(Debug)]
pub struct HealthState {
    healthy: AtomicBool,
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    passes: u32,
    fails: u32,
    last_error: Option<String>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            healthy: AtomicBool::new(true),
            inner: Mutex::new(Counts::default()),
        }
    }
}

impl HealthState {
    /// Whether the endpoint may receive requests.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The last failed check, for operator-facing details.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error
            .clone()
    }

    /// Records one check's result and updates health against the thresholds.
    pub fn observe(&self, result: Result<(), String>, policy: &HealthCheckPolicy) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                c.fails = 0;
                c.passes = c.passes.saturating_add(1);
                if c.passes >= policy.healthy_threshold.max(1) {
                    self.healthy.store(true, Ordering::Release);
                }
            }
            Err(e) => {
                c.passes = 0;
                c.fails = c.fails.saturating_add(1);
                c.last_error = Some(e);
                if c.fails >= policy.unhealthy_threshold.max(1) {
                    self.healthy.store(false, Ordering::Release);
                }
            }
        }
    }
}

/// Runs one check of `endpoint` through `svc`; `Err` says what did not match.
pub async fn check_once<S, B>(
    svc: &S,
    endpoint: &Endpoint,
    policy: &HealthCheckPolicy,
) -> Result<(), String>
where
    S: tower::Service<Request<ReplayBody>, Response = Response<B>, Error = AttemptError> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<super::body::BoxError>,
{
    let what = format!("GET {} on {}", policy.path, endpoint.addr);
    let req = Request::get(policy.path.as_str())
        .header(http::header::HOST, endpoint.addr.to_string())
        .body(ReplayBody::empty())
        .map_err(|e| format!("{what}: invalid health-check path: {e}"))?;
    let check = async {
        let mut svc = svc.clone();
        let rsp = tower::ServiceExt::ready(&mut svc)
            .await
            .map_err(|e| e.error.to_string())?
            .call(req)
            .await
            .map_err(|e| e.error.to_string())?;
        let status = rsp.status().as_u16();
        if status != policy.expect_status {
            return Err(format!(
                "status {status}, expected {}",
                policy.expect_status
            ));
        }
        if let Some(expected) = &policy.expect_body {
            let body = Limited::new(rsp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the body failed: {e}"))?
                .to_bytes();
            let got = String::from_utf8_lossy(&body);
            if got.trim() != expected.trim() {
                return Err(format!(
                    "body `{}`, expected `{}`",
                    got.trim(),
                    expected.trim()
                ));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(policy.timeout, check).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {}",
            humantime::format_duration(policy.timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let p = HealthCheckPolicy {
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            ..Default::default()
        };
        let h = HealthState::default();
        assert!(h.is_healthy());
        h.observe(Err("x".into()), &p);
        assert!(h.is_healthy());
        h.observe(Err("y".into()), &p);
        assert!(!h.is_healthy());
        assert_eq!(h.last_error().as_deref(), Some("y"));
        h.observe(Ok(()), &p);
        assert!(!h.is_healthy());
        h.observe(Ok(()), &p);
        assert!(h.is_healthy());
    }
}
