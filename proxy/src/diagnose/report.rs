//! The diagnosis report: the steps walked, their timing, and the finding at the first failure,
//! rendered for a terminal or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// The step succeeded.
    Ok,
    /// The step failed; the report's finding explains why.
    Failed,
    /// Not run, because an earlier step failed or it does not apply.
    Skipped,
}

/// One step of the walk (config, dns, tcp, tls, identity, http).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Step name.
    pub name: &'static str,
    /// How it ended.
    pub status: StepStatus,
    /// Time the step took, in milliseconds.
    pub duration_ms: f64,
    /// What was done or seen (addresses, identities, status line).
    pub detail: String,
}

/// What went wrong, said as an operator would: the cause, one sentence, and what to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable cause name: a `docmesh-error` cause (e.g. `connect-timeout`) where one fits,
    /// else a diagnose-only one (`upstream-5xx`, `tls-rejected-by-peer`, `config`, ...).
    pub cause: String,
    /// One sentence: what happened, with the addresses and identities involved.
    pub summary: String,
    /// What to check next, most likely first.
    pub checks: Vec<String>,
}

impl Finding {
    /// A finding with its checks.
    pub fn new(cause: impl Into<String>, summary: impl Into<String>, checks: &[&str]) -> Self {
        Finding {
            cause: cause.into(),
            summary: summary.into(),
            checks: checks.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

/// The whole diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was diagnosed, as given (service name or URL).
    pub target: String,
    /// The URL actually probed.
    pub url: String,
    /// The SPIFFE ID the peer must present, when known.
    pub expected_id: Option<String>,
    /// Trace id sent with the HTTP request: look it up in the peer's access log.
    pub trace_id: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// True when every step succeeded.
    pub ok: bool,
    /// The first failure, explained.
    pub finding: Option<Finding>,
}

impl Report {
    /// A report with no steps yet.
    pub fn new(target: &str, url: &str, expected_id: Option<&str>, trace_id: String) -> Self {
        Report {
            target: target.to_owned(),
            url: url.to_owned(),
            expected_id: expected_id.map(str::to_owned),
            trace_id,
            steps: Vec::new(),
            ok: true,
            finding: None,
        }
    }

    /// Records a successful step.
    pub fn ok(&mut self, name: &'static str, took: Duration, detail: impl Into<String>) {
        self.push(name, StepStatus::Ok, took, detail.into());
    }

    /// Records a step that does not apply (e.g. TLS for an `http://` URL).
    pub fn skip(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(name, StepStatus::Skipped, Duration::ZERO, detail.into());
    }

    /// Records the failing step and its finding, and marks every later step skipped.
    pub fn fail(
        &mut self,
        name: &'static str,
        took: Duration,
        finding: Finding,
        later: &[&'static str],
    ) {
        self.push(name, StepStatus::Failed, took, finding.summary.clone());
        for step in later {
            self.skip(step, "not run: an earlier step failed");
        }
        self.ok = false;
        self.finding = Some(finding);
    }

    fn push(&mut self, name: &'static str, status: StepStatus, took: Duration, detail: String) {
        self.steps.push(Step {
            name,
            status,
            duration_ms: (took.as_secs_f64() * 1e6).round() / 1e3,
            detail,
        });
    }

    /// The report as pretty JSON (`--json`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "docmesh diagnose {}", self.target);
        if self.url != self.target {
            let _ = write!(out, " ({})", self.url);
        }
        if let Some(id) = &self.expected_id {
            let _ = write!(out, ", expecting {id}");
        }
        let _ = writeln!(out, "\n  trace id {}\n", self.trace_id);
        for s in &self.steps {
            let mark = match s.status {
                StepStatus::Ok => " ok ",
                StepStatus::Failed => "FAIL",
                StepStatus::Skipped => "skip",
            };
            let took = match s.status {
                StepStatus::Skipped => String::new(),
                _ => format!("{:.1} ms", s.duration_ms),
            };
            let _ = writeln!(out, "  [{mark}] {:<9}{took:>10}  {}", s.name, s.detail);
        }
        match &self.finding {
            None => {
                let _ = writeln!(
                    out,
                    "\nall steps passed: the path to {} is healthy",
                    self.url
                );
            }
            Some(f) => {
                let _ = writeln!(out, "\ncause: {}\n  {}\ncheck:", f.cause, f.summary);
                for c in &f.checks {
                    let _ = writeln!(out, "  - {c}");
                }
            }
        }
        out
    }
}
