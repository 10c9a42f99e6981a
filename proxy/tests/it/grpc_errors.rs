//! gRPC callers get gRPC errors (issue 21): a real gRPC client (grpcio from PyPI) calls through
//! a sidecar pair whose app is down and sees a gRPC status (`UNAVAILABLE`, the cause and detail
//! in the message, `docmesh-error` in the metadata) instead of "Received http2 header with
//! status: 502".

use std::process::Command;

use crate::support::*;

/// A unary call with grpcio to `target`; prints the outcome as JSON.
const CLIENT: &str = r#"
import json, sys, grpc
target = sys.argv[1]
with grpc.insecure_channel(target) as channel:
    call = channel.unary_unary("/docmesh.test.Echo/Say",
                               request_serializer=None, response_deserializer=None)
    try:
        call(b"\x0a\x02hi", timeout=15)
        print(json.dumps({"code": "OK"}))
    except grpc.RpcError as e:
        md = {k: v for k, v in (e.trailing_metadata() or ())}
        md.update({k: v for k, v in (e.initial_metadata() or ())})
        print(json.dumps({"code": e.code().name, "details": e.details(),
                          "docmesh_error": md.get("docmesh-error")}))
"#;

fn grpcio_call(target: std::net::SocketAddr) -> serde_json::Value {
    let out = Command::new("python3")
        .args(["-c", CLIENT, &target.to_string()])
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 is needed for the grpcio test ({e}); run tests/scripts/install-deps.sh")
        });
    assert!(
        out.status.success(),
        "the grpcio client failed; is grpcio installed (`python3 -m pip install grpcio`, \
         tests/scripts/install-deps.sh does it)?\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sees_unavailable_with_the_cause_when_the_app_is_down() {
    // The app's port: bound, then released, so nothing listens there.
    let app = closed_port();
    let pair = Pair::start(app, PairOptions::default()).await;
    let got = tokio::task::spawn_blocking(move || grpcio_call(pair.outbound))
        .await
        .unwrap();
    assert_eq!(got["code"], "UNAVAILABLE", "{got}");
    assert_eq!(got["docmesh_error"], "connect-refused", "{got}");
    let details = got["details"].as_str().unwrap_or_default();
    assert!(details.starts_with("connect-refused: "), "{got}");
    assert!(details.contains("the app"), "{got}");
}
