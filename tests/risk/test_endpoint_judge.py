"""EndpointJudge against a real HTTP server on 127.0.0.1, including the ways endpoints fail."""

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from saferegx.risk.critic import EndpointJudge


class Handler(BaseHTTPRequestHandler):
    """Behaviour chosen by a marker in the user message: [ok:N], [500], [flaky], [badjson],
    [garbage], [sleep], [404]."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        marker = user[user.index("[") + 1 : user.index("]")]
        server = self.server
        with server.lock:
            server.hits[marker] += 1
            server.auth.add(self.headers.get("Authorization"))
            hits = server.hits[marker]
        assert self.path == "/v1/chat/completions" and body["model"] == "judge-1"
        if marker == "500" or (marker == "flaky" and hits == 1):
            return self.reply(500, b'{"error": "overloaded"}')
        if marker == "404":
            return self.reply(404, b'{"error": "no such model"}')
        if marker == "badjson":
            return self.reply(200, b'{"choices": [')
        if marker == "sleep":
            time.sleep(1.0)
        content = {"garbage": "I cannot rate this.", "flaky": "2", "sleep": "1"}.get(marker)
        if content is None:
            content = f"Rating: {marker.split(':')[1]}"
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        self.reply(200, json.dumps(payload).encode())

    def reply(self, code, data):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.hits, httpd.auth, httpd.lock = Counter(), set(), threading.Lock()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def judge(server, **kw):
    host, port = server.server_address
    args = dict(model="judge-1", api_key="sk-test", timeout=0.3, retries=2, backoff=0.01)
    return EndpointJudge(f"http://{host}:{port}/v1/", **{**args, **kw})


def test_scores_parse_the_rubric_and_are_cached(server):
    j = judge(server)
    prompts = ["[ok:1] hi", "[ok:3] hm", "[ok:5] bad", "[ok:1] hi"]
    risk = j.score(prompts, ["r1", "r2", "r3", "r1"])
    torch.testing.assert_close(risk, torch.tensor([0.0, 0.5, 1.0, 0.0]))
    assert server.hits["ok:1"] == 1  # duplicate text scored once
    j.score(prompts, ["r1", "r2", "r3", "r1"])
    assert sum(server.hits.values()) == 3  # all cached
    j.score(["[ok:1] hi"])  # without a response it is another text
    assert server.hits["ok:1"] == 2
    assert server.auth == {"Bearer sk-test"}


def test_http_500_retries_then_fails_closed_uncached(server):
    j = judge(server)
    with pytest.warns(UserWarning, match="HTTP Error 500"):
        risk = j.score(["[500] x", "[ok:2] y"])
    torch.testing.assert_close(risk, torch.tensor([1.0, 0.25]))
    assert server.hits["500"] == 3  # one try plus two retries
    with pytest.warns(UserWarning):
        j.score(["[500] x"])
    assert server.hits["500"] == 6  # a failure is not cached


def test_transient_500_recovers(server):
    assert judge(server).score(["[flaky] x"]).tolist() == [0.25]
    assert server.hits["flaky"] == 2


def test_client_error_is_not_retried(server):
    with pytest.warns(UserWarning, match="404"):
        assert judge(server).score(["[404] x"]).tolist() == [1.0]
    assert server.hits["404"] == 1


@pytest.mark.parametrize("marker, message", [("badjson", "JSONDecodeError"), ("garbage", "no 1-5 score")])
def test_unparsable_replies_fail_closed(server, marker, message):
    with pytest.warns(UserWarning, match=message):
        assert judge(server).score([f"[{marker}] x"]).tolist() == [1.0]


def test_timeout_fails_closed_within_bounded_time(server):
    start = time.monotonic()
    with pytest.warns(UserWarning, match="risk set to 1.0"):
        assert judge(server, retries=1).score(["[sleep] x"]).tolist() == [1.0]
    assert time.monotonic() - start < 2.0
    assert server.hits["sleep"] == 2


def test_unreachable_endpoint_fails_closed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    j = EndpointJudge(f"http://127.0.0.1:{port}", "judge-1", timeout=0.3, retries=1, backoff=0.01)
    with pytest.warns(UserWarning, match="URLError"):
        assert j.score(["a", "b"]).tolist() == [1.0, 1.0]
