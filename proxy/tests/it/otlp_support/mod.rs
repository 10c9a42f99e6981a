//! An independent OTLP receiver (Python, the published OpenTelemetry protos and grpcio from
//! PyPI; see receiver.py) as a child process, and its received spans as JSON.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::support::bounded;

const SCRIPT: &str = include_str!("receiver.py");

/// A running receiver (killed when dropped).
pub struct Receiver {
    _child: Child,
    pub port: u16,
    spans: mpsc::UnboundedReceiver<Json>,
    /// Spans read so far and not yet taken by [`Receiver::span`].
    seen: Vec<Json>,
}

impl Receiver {
    /// Starts `receiver.py` with `mode` (`grpc`, `http`) and `behaviour` (`ok`, `error`,
    /// `slow`).
    pub async fn start(mode: &str, behaviour: &str) -> Receiver {
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT, mode, behaviour])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 is needed for the OTLP receiver (tests/scripts/install-deps.sh)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = bounded(lines.next_line()).await.unwrap().expect(
            "the OTLP receiver exited; are opentelemetry-proto and grpcio installed \
             (tests/scripts/install-deps.sh)?",
        );
        let port = serde_json::from_str::<Json>(&first).unwrap()["port"]
            .as_u64()
            .unwrap() as u16;
        let (tx, spans) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Json>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Receiver {
            _child: child,
            port,
            spans,
            seen: Vec::new(),
        }
    }

    /// The first received span matching `pred` (waiting for it).
    pub async fn span(&mut self, pred: impl Fn(&Json) -> bool) -> Json {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        bounded(async {
            loop {
                let v = self.spans.recv().await.expect("receiver stdout closed");
                if pred(&v) {
                    return v;
                }
                self.seen.push(v);
            }
        })
        .await
    }

    /// Every span received within `wait` from now, with those not taken yet.
    pub async fn drain(&mut self, wait: Duration) -> Vec<Json> {
        let _ = tokio::time::timeout(wait, async {
            while let Some(v) = self.spans.recv().await {
                self.seen.push(v);
            }
        })
        .await;
        std::mem::take(&mut self.seen)
    }
}

/// The `[observability.otlp]` section for a collector at 127.0.0.1:`port`, exporting quickly.
pub fn otlp_toml(protocol: &str, port: u16, timeout: &str) -> String {
    format!(
        "[observability.otlp]\nendpoint = \"http://127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\nbatch_delay = \"20ms\"\ntimeout = \"{timeout}\"\n"
    )
}

/// Parses `text` with the OpenMetrics parser of PyPI's `prometheus-client` (failing the test
/// if it is not valid OpenMetrics) and returns the samples that carry an exemplar, as
/// `{"name", "labels", "exemplar"}` objects.
pub fn openmetrics_exemplars(text: &str) -> Vec<Json> {
    const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        if s.exemplar is not None:
            out.append({"name": s.name, "labels": s.labels, "exemplar": s.exemplar.labels})
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus-client (tests/scripts/install-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "/metrics is not valid OpenMetrics (or prometheus-client is missing): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Json>>(&out.stdout).unwrap()
}
