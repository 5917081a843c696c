"""Reading the workers' length histograms (``operator/metrics.py``): the Prometheus text
the workers render, the driver pods, and the HTTP reader."""

from __future__ import annotations

import asyncio
import http.server
import math
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from builders import metrics_text, raw_server, worker_pod

from exegpt.operator.metrics import (
    DriverPod,
    HttpMetricsReader,
    LengthHistograms,
    MetricsError,
    driver_pods,
    parse_length_histograms,
)
from exegpt.runner.metrics import TOKEN_LENGTHS_32K, ServingMetrics


def test_the_parser_reads_what_serving_metrics_renders() -> None:
    m = ServingMetrics()
    for n in (1, 3, 100, 100, 5000, 40_000):
        m.admitted(n)
    for n in (20, 700):
        m.finished("stop", n, 1.0)
    seen = parse_length_histograms(m.render())
    expected = m.length_histograms()
    assert list(seen.bounds) == expected["input"][0]
    assert list(seen.input) == expected["input"][1]
    assert list(seen.output) == expected["output"][1]
    assert seen.bounds[-1] == math.inf and len(seen.bounds) == len(TOKEN_LENGTHS_32K) + 1
    assert sum(seen.input) == 6 and seen.input[-1] == 1  # 40000 > 32768


def test_drivers_add_up_bucket_by_bucket() -> None:
    a = parse_length_histograms(metrics_text({100: 2}, {20: 1}))
    b = parse_length_histograms(metrics_text({100: 1, 300: 4}, {20: 2}))
    total = a + b
    assert sum(total.input) == 7 and sum(total.output) == 3
    bucket = total.bounds.index
    assert total.input[bucket(108)] == 3 and total.input[bucket(304)] == 4  # (91,108], (256,304]


def test_buckets_that_differ_do_not_add_up() -> None:
    a = LengthHistograms((1.0, math.inf), (1, 0), (1, 0))
    b = LengthHistograms((2.0, math.inf), (1, 0), (1, 0))
    with pytest.raises(MetricsError, match="different buckets"):
        a + b


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no exegpt_input_tokens histogram"),
        ("# nothing\nexegpt_queue_depth 3\n", "no exegpt_input_tokens histogram"),
        (
            'exegpt_input_tokens_bucket{le="1"} 1\nexegpt_output_tokens_bucket{le="+Inf"} 1\n',
            "exegpt_input_tokens: no \\+Inf bucket",
        ),
        (
            'exegpt_input_tokens_bucket{le="1"} 5\nexegpt_input_tokens_bucket{le="+Inf"} 2\n'
            'exegpt_output_tokens_bucket{le="+Inf"} 1\n',
            "not cumulative",
        ),
        ('exegpt_input_tokens_bucket{le="x"} 5\n', "unreadable bucket line"),
        ("exegpt_input_tokens_bucket 5\n", "a bucket without 'le'"),
        ('exegpt_input_tokens_bucket{le="+Inf"} -1\n', "is not a count"),
    ],
)
def test_malformed_metrics_are_an_error_that_says_what(text: str, message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        parse_length_histograms(text)


def test_only_ready_stage_zero_pods_drive() -> None:
    pods = [
        worker_pod("x", "worker", 0),
        worker_pod("x", "worker", 1),  # stage 1 of replica 0
        worker_pod("x", "worker", 2),
        worker_pod("x", "worker", 3),
        worker_pod("x", "worker", 4, ready=False),
        worker_pod("xy", "worker", 0),  # another deployment's
    ]
    pods[2]["status"].pop("podIP")
    assert driver_pods(pods, "x-worker", stages=2) == [DriverPod("x-worker-0", "10.0.0.1")]
    assert [d.name for d in driver_pods(pods, "x-worker", stages=1)] == [
        "x-worker-0",
        "x-worker-1",
        "x-worker-3",
    ]
    deleting = worker_pod("x", "worker", 0)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert driver_pods([deleting], "x-worker", stages=1) == []


# -- the HTTP reader ---------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = metrics_text({100: 2}, {20: 2}).encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_http_reader_gets_metrics_from_the_pod(server: int) -> None:
    text = asyncio.run(HttpMetricsReader(timeout_seconds=2).read("ns", "p", "127.0.0.1", server))
    assert sum(parse_length_histograms(text).input) == 2


def test_an_unreachable_pod_is_a_metrics_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MetricsError, match=r"127\.0\.0\.1"):
        asyncio.run(HttpMetricsReader(timeout_seconds=2).read("ns", "p", "127.0.0.1", port))


# -- a misbehaving worker costs one deadline and ends in a MetricsError -------------------------


def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"\x00\xff\xfeGARBAGE not http at all\r\n\r\n")


def _trickle(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(100):  # a byte every 0.2 s: every socket read is quick, the whole is not
        conn.sendall(b"#")
        time.sleep(0.2)


def test_an_answer_that_is_not_http_is_a_metrics_error() -> None:
    with raw_server(_garbage) as port, pytest.raises(MetricsError, match=r"127\.0\.0\.1"):
        asyncio.run(HttpMetricsReader(timeout_seconds=2).read("ns", "p", "127.0.0.1", port))


def test_a_worker_answering_byte_by_byte_is_cut_at_the_deadline() -> None:
    with raw_server(_trickle) as port:
        start = time.monotonic()
        with pytest.raises(MetricsError, match=r"within 1 s"):
            asyncio.run(HttpMetricsReader(timeout_seconds=1).read("ns", "p", "127.0.0.1", port))
        assert time.monotonic() - start < 3.0
