#!/usr/bin/env python3
"""Writes the fuzzers' seed inputs into fuzz/corpus/<target>/ (run once, then `cargo fuzz cmin`).

Seeds come from the unit tests' inputs: the pgoutput messages recorded from PostgreSQL
(src/pgoutput/fixtures), DS SSE bodies as the servers send them, data events with every kind
of message ingest meets, the README's templates and config file.
"""
import glob, hashlib, os, struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def framed(messages):
    return b"".join(struct.pack(">H", len(m)) + m for m in messages)


for path in sorted(glob.glob(os.path.join(ROOT, "src/pgoutput/fixtures/*.hex"))):
    lines = [l.strip() for l in open(path) if l.strip() and not l.startswith("#")]
    messages = [bytes.fromhex(l) for l in lines]
    put("pgoutput", framed(messages))

SSE = [
    b'event: data\ndata: [{"key":"a","value":{"id":1}}]\n\nevent: control\ndata: {"streamNextOffset":"0_12","upToDate":true}\n\n',
    b'\xef\xbb\xbfevent: data\r\ndata: [1,\r\ndata: 2]\r\n\r\nevent: control\r\ndata: {"streamNextOffset":"1","streamCursor":"c","streamClosed":true}\r\n\r\n',
    b': keepalive\n\nretry: 1500\nid: 7\nevent: other\ndata: x\n\nevent: control\ndata: {"upToDate":true}\n\n',
    b'data: [\ndata: {"a":"\\"]"}]\n\nevent: control\ndata: not json\n\n',
]
for i, body in enumerate(SSE):
    for knob in (0x00, 0x85, 0x13):
        put("sse", bytes([knob]) + body)

INGEST = [
    b'[{"key":"a","type":"items","value":{"id":1},"headers":{"operation":"insert"}}]',
    b'[{"key":"k\\n1","operation":"update","type":null},{"headers":{"operation":"delete"},"key":42}]',
    b'[1, "two", [3], {"v":"\\u0000"}, {"key":"\\ud800"}, {"v":"\\udc00"}, null, true]',
    b'[{"a":1},,{"b":2},]',
    b' [ {"nested":[{"]":"["}]} ] trailing',
    b'{"not":"an array"}',
    b'[{"k":"\xff\xfe"}]',
    b'[{"key":"a","key":"b","type":"t","type":"u"}]',
]
for body in INGEST:
    for knob in (0x80, 0x02):
        put("ingest_decode", bytes([knob]) + body)

TEMPLATES = [
    b"pg-{table}\nitems",
    b"sessions/{session_id}\na b@c.com\na/b\n.\n..\n_null_\n\n%2F",
    b"{schema}.{table}/{id}-{kind}\n1\n2",
    b"tenants/{tenant}/orders/{tenant}\nx",
    b"{a}{b}\n_empty_",
    b"bad {brace\nx",
    b"items=pg-items",
]
for t in TEMPLATES:
    put("stream_template", t)

CONFIGS = [
    open(os.path.join(ROOT, "README.md"), "rb").read().split(b"```toml\n", 1)[1].split(b"```", 1)[0],
    b'[capture]\ntables = ["items", "public.orders"]\nstream_template = "pg-{table}"\nrouts = 1\n',
    b'[capture]\nroutes = { items = "sessions/{session_id}", "s.t" = "x/{id}" }\nlinger_ms = 5\ntoast = "full"\nsnapshot = "initial"\n',
    b'[ingest]\nstreams = ["a", "b"]\nidle_timeout = "60s"\nretention = "30d"\ndead_letter_retention = "7days 12h"\nretention_interval = "0"\n',
    b'postgres_url = "host=localhost user=app sslmode=verify-full sslrootcert=system"\nds_headers = ["Bad Header"]\nds_token = "t"\n',
    b'output = "json"\nlog_format = "yaml"\n',
]
for c in CONFIGS:
    put("config_file", c)
