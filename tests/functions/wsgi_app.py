"""A WSGI application under a real WSGI server (the standard library's wsgiref, an
HTTP/1.0 server that closes each connection), for http mode. PORT from argv[1]."""

import json
import sys
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server


def app(environ: dict[str, object],
        start_response: Callable[[str, list[tuple[str, str]]], object]) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    length = int(str(environ.get("CONTENT_LENGTH") or 0))
    body = stream.read(length) if length else b""  # type: ignore[attr-defined]
    answer = json.dumps({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                         "query": environ.get("QUERY_STRING", ""),
                         "body": body.decode("utf-8", "replace")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(answer)))])
    return [answer]


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    print("wsgi up", file=sys.stderr, flush=True)
    make_server("127.0.0.1", int(sys.argv[1]), app, handler_class=Quiet).serve_forever()
