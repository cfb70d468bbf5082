"""A real OTLP receiver for vx's end-to-end tests (tests/tests/otel.rs).

Built from PyPI opentelemetry-proto + grpcio (tests/peers/requirements.txt):
OTLP/gRPC (TraceService, MetricsService) and OTLP/HTTP protobuf
(POST /v1/traces, /v1/metrics) on 127.0.0.1, on ports the OS picks.

Prints `READY <grpc port> <http port>`, then one JSON line per export
request it receives: {"signal", "transport", "headers", "spans"|"metrics"}.
With `--blackhole`, the HTTP side accepts connections and never answers
(a collector that hangs).
"""

import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

LOCK = threading.Lock()


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def spans_of(req):
    out = []
    for rs in req.resource_spans:
        res = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    {
                        "name": s.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": attrs(s.attributes),
                        "status": s.status.code,
                        "events": [e.name for e in s.events],
                        "resource": res,
                    }
                )
    return out


def metrics_of(req):
    out = []
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                points = []
                for p in getattr(m, kind).data_points:
                    pt = {"attributes": attrs(p.attributes)}
                    if kind == "histogram":
                        pt["count"] = p.count
                        pt["sum"] = p.sum
                    else:
                        pt["value"] = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                    points.append(pt)
                out.append({"name": m.name, "kind": kind, "points": points})
    return out


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        emit(
            {
                "signal": "traces",
                "transport": "grpc",
                "headers": dict(context.invocation_metadata()),
                "spans": spans_of(request),
            }
        )
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        emit(
            {
                "signal": "metrics",
                "transport": "grpc",
                "headers": dict(context.invocation_metadata()),
                "metrics": metrics_of(request),
            }
        )
        return metrics_service_pb2.ExportMetricsServiceResponse()


BLACKHOLE = "--blackhole" in sys.argv


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        if BLACKHOLE:
            threading.Event().wait()
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path == "/v1/traces":
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            emit({"signal": "traces", "transport": "http", "headers": headers, "spans": spans_of(req)})
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        elif self.path == "/v1/metrics":
            req = metrics_service_pb2.ExportMetricsServiceRequest()
            req.ParseFromString(body)
            emit({"signal": "metrics", "transport": "http", "headers": headers, "metrics": metrics_of(req)})
            reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()
    emit_line = f"READY {grpc_port} {http.server_address[1]}"
    with LOCK:
        sys.stdout.write(emit_line + "\n")
        sys.stdout.flush()
    # Until the test closes our stdin (or kills us).
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
