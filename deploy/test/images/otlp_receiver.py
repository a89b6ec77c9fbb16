"""Stand-in for Jaeger in the compose test, where its image cannot be had.

Speaks what the stack uses of Jaeger: OTLP trace export over gRPC (4317,
opentelemetry.proto.collector.trace.v1.TraceService/Export) and HTTP (4318,
POST /v1/traces, protobuf or JSON), and the two query calls the test and
the README make on the UI port (16686): GET /api/services and
GET /api/traces?service=NAME[&limit=N], answered in Jaeger's JSON shape.
Metrics and logs exports are accepted and dropped.

Spans are decoded with a few lines of protobuf wire parsing (only the
fields read here: resource service.name, trace id, span id, parent id,
name), so the image needs Debian's python3-grpcio and nothing else. It
keeps the last 20,000 spans.
"""

import collections
import json
import threading
from concurrent import futures
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import grpc
from jsonhttp import JsonHandler

MAX_SPANS = 20_000
SPANS = collections.deque(maxlen=MAX_SPANS)  # (service, trace_id, span_id, parent_id, name)
LOCK = threading.Lock()


def fields(buf):
    """Yields (field number, wire type, value) of one protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = varint(buf, i)
        elif wt == 1:
            val, i = buf[i : i + 8], i + 8
        elif wt == 2:
            ln, i = varint(buf, i)
            val, i = buf[i : i + ln], i + ln
        elif wt == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, val


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def service_name(resource):
    for num, _, kv in fields(resource):
        if num != 1:
            continue
        key = value = None
        for n, _, v in fields(kv):
            if n == 1:
                key = v.decode()
            elif n == 2:
                for an, _, av in fields(v):
                    if an == 1:
                        value = av.decode()
        if key == "service.name":
            return value
    return "unknown_service"


def ingest_protobuf(body):
    """ExportTraceServiceRequest: resource_spans=1 { resource=1, scope_spans=2 { spans=2 } }."""
    got = []
    for num, _, rs in fields(body):
        if num != 1:
            continue
        service, scopes = "unknown_service", []
        for n, _, v in fields(rs):
            if n == 1:
                service = service_name(v)
            elif n == 2:
                scopes.append(v)
        for scope in scopes:
            for n, _, span in fields(scope):
                if n != 2:
                    continue
                tid = sid = pid = b""
                name = ""
                for sn, _, sv in fields(span):
                    if sn == 1:
                        tid = sv
                    elif sn == 2:
                        sid = sv
                    elif sn == 4:
                        pid = sv
                    elif sn == 5:
                        name = sv.decode()
                got.append((service, tid.hex(), sid.hex(), pid.hex(), name))
    store(got)
    return len(got)


def ingest_json(body):
    doc = json.loads(body)
    got = []
    for rs in doc.get("resourceSpans", []):
        service = "unknown_service"
        for kv in rs.get("resource", {}).get("attributes", []):
            if kv.get("key") == "service.name":
                service = kv.get("value", {}).get("stringValue", service)
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                got.append(
                    (service, span.get("traceId", ""), span.get("spanId", ""), span.get("parentSpanId", ""), span.get("name", ""))
                )
    store(got)
    return len(got)


def store(spans):
    with LOCK:
        SPANS.extend(spans)
    for service, *_ in spans[:1]:
        print(f"otlp: {len(spans)} span(s) from {service}", flush=True)


def export(request, _context):
    try:
        ingest_protobuf(request)
    except (ValueError, IndexError) as e:
        print(f"otlp: undecodable export: {e}", flush=True)
    return b""  # an empty Export*ServiceResponse


def discard(_request, _context):
    return b""


def grpc_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    raw = dict(request_deserializer=None, response_serializer=None)
    for service, handler in (
        ("opentelemetry.proto.collector.trace.v1.TraceService", export),
        ("opentelemetry.proto.collector.metrics.v1.MetricsService", discard),
        ("opentelemetry.proto.collector.logs.v1.LogsService", discard),
    ):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"Export": grpc.unary_unary_rpc_method_handler(handler, **raw)}),)
        )
    server.add_insecure_port("0.0.0.0:4317")
    server.start()
    return server


class OtlpHttp(JsonHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/traces":
            try:
                if "json" in (self.headers.get("Content-Type") or ""):
                    ingest_json(body)
                else:
                    ingest_protobuf(body)
            except (ValueError, IndexError) as e:
                self.send_error(400, f"undecodable export: {e}")
                return
        elif self.path not in ("/v1/metrics", "/v1/logs"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()



class Query(JsonHandler):
    def do_GET(self):
        url = urlparse(self.path)
        with LOCK:
            spans = list(SPANS)
        if url.path == "/api/services":
            names = sorted({s[0] for s in spans})
            self.json({"data": names, "total": len(names)})
        elif url.path == "/api/traces":
            q = parse_qs(url.query)
            service = q.get("service", [""])[0]
            limit = int(q.get("limit", ["20"])[0])
            traces = collections.OrderedDict()
            for svc, tid, sid, pid, name in reversed(spans):
                if svc == service and tid not in traces and len(traces) < limit:
                    traces[tid] = []
            for svc, tid, sid, pid, name in spans:
                if tid in traces:
                    traces[tid].append((svc, sid, pid, name))
            data = []
            for tid, members in traces.items():
                procs = {svc: f"p{i}" for i, svc in enumerate(sorted({m[0] for m in members}))}
                data.append(
                    {
                        "traceID": tid,
                        "spans": [
                            {
                                "traceID": tid,
                                "spanID": sid,
                                "operationName": name,
                                "references": [{"refType": "CHILD_OF", "traceID": tid, "spanID": pid}] if pid else [],
                                "processID": procs[svc],
                            }
                            for svc, sid, pid, name in members
                        ],
                        "processes": {p: {"serviceName": svc} for svc, p in procs.items()},
                    }
                )
            self.json({"data": data, "total": len(data)})
        elif url.path == "/":
            self.json({"standin": "otlp receiver for the compose test", "spans": len(spans)})
        else:
            self.send_error(404)



def main():
    server = grpc_server()
    for port, handler in ((4318, OtlpHttp), (16686, Query)):
        httpd = ThreadingHTTPServer(("0.0.0.0", port), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("otlp stand-in: gRPC :4317, HTTP :4318, query :16686", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
