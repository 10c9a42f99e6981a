"""An independent OTLP trace receiver for the docmesh tests, built on the published
OpenTelemetry protos (PyPI `opentelemetry-proto`) and `grpcio`.

    python3 receiver.py grpc|http ok|error|slow

Listens on 127.0.0.1 (a free port), prints {"port": N} first, then one JSON line per received
span (ids in hex, attributes and resource attributes as objects). `error` answers every export
with an error (gRPC UNAVAILABLE, HTTP 503), `slow` answers after 30 s.
"""
import json
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as svc_grpc

MODE, BEHAVIOUR = sys.argv[1], sys.argv[2]
LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def emit(request):
    with LOCK:
        for rs in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    print(json.dumps({
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "flags": s.flags,
                        "status_code": s.status.code,
                        "status_message": s.status.message,
                        "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                        "resource": resource,
                        "scope": ss.scope.name,
                        "transport": MODE,
                    }), flush=True)


class Traces(svc_grpc.TraceServiceServicer):
    def Export(self, request, context):
        if BEHAVIOUR == "slow":
            time.sleep(30)
        if BEHAVIOUR == "error":
            context.abort(14, "receiver told to fail")  # UNAVAILABLE
        emit(request)
        return svc.ExportTraceServiceResponse()


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if BEHAVIOUR == "slow":
            time.sleep(30)
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.answer(404, b"wrong path or content type")
            return
        if BEHAVIOUR == "error":
            self.answer(503, b"receiver told to fail")
            return
        emit(svc.ExportTraceServiceRequest.FromString(body))
        self.answer(200, svc.ExportTraceServiceResponse().SerializeToString())

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if MODE == "grpc":
    server = __import__("grpc").server(futures.ThreadPoolExecutor(max_workers=4))
    svc_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    server.wait_for_termination()
else:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()
