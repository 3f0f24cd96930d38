"""Converts CSV text into JSON records: a TaskFlow task written in Python.

Input:  {"csv": "name,age\\nAda,36\\n", "delimiter": ","}   (delimiter optional)
        or {"url": "https://…/data.csv"}: the CSV is fetched over HTTP, through
        wasi:http/outgoing-handler, from a host the job's queue allows
Output: {"count": 1, "columns": ["name", "age"], "rows": [{"name": "Ada", "age": "36"}]}

Built into a component of the taskflow:task world by componentize-py
(see build.sh); it uses only Python's standard library and the world's
imports.
"""

import csv
import io
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, outgoing_handler, streams
from wit_world.imports import wasi_http_types as http
from wit_world.imports.taskflow_task_types import TaskError


def http_get(url: str) -> tuple[int, bytes]:
    """GETs `url` and returns its status and body. The host checks the URL
    against the queue's allowed hosts; a refusal arrives as an error code,
    and fails the job for good, as a body over a size limit does; other
    failures (a timeout, a refused connection) are worth a retry. As the
    Rust SDK's errors (docs/sdk.md), messages never repeat the query."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise fatal(f"url must start with http:// or https://: {shown(url)!r}")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path_with_query = rest[:end], rest[end:]
    if not path_with_query.startswith("/"):
        path_with_query = "/" + path_with_query
    request = http.OutgoingRequest(http.Fields())
    request.set_scheme(http.Scheme_Https() if scheme == "https" else http.Scheme_Http())
    try:
        request.set_authority(authority)
        request.set_path_with_query(path_with_query)
    except Err:
        raise fatal(f"not a valid URL: {shown(url)!r}")
    future = outgoing_handler.handle(request, None)
    while (answer := future.get()) is None:
        future.subscribe().block()
    if isinstance(answer.value, Err):
        code = answer.value.value
        fatal_code = isinstance(code, http.ErrorCode_HttpRequestDenied) or "Size" in type(code).__name__
        raise Err(TaskError(message=f"GET {shown(url)}: {code}", retryable=not fatal_code))
    response = answer.value.value
    status = response.status()
    body = response.consume()
    stream = body.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(65536))
        except Err as error:
            if isinstance(error.value, streams.StreamError_Closed):
                break
            raise Err(TaskError(message=f"reading {shown(url)} failed", retryable=True))
    return status, b"".join(chunks)


def shown(url: str) -> str:
    """`url` as a message may show it: without its query or fragment, which
    may carry tokens, or credentials. A password may hold an unencoded `/`,
    `?` or `#`, so everything up to the last `@` goes."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    credentials, at, after = rest.rpartition("@")
    rest = "…@" + after if at else rest
    return scheme + sep + rest.split("?", 1)[0].split("#", 1)[0]


def status_failure(url: str, status: int) -> Err:
    """A failed GET: retried when the server may answer later (408, 429,
    5xx), fatal otherwise, as the SDK's `error_for_status` decides."""
    retryable = status in (408, 429) or status >= 500
    return Err(TaskError(message=f"GET {shown(url)} answered {status}", retryable=retryable))


def fatal(message: str) -> Err:
    """A failure no retry can fix: the job is dead-lettered at once."""
    return Err(TaskError(message=message, retryable=False))


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        try:
            request = json.loads(input)
            delimiter = request.get("delimiter", ",")
            if "url" in request:
                status, body = http_get(request["url"])
                if not 200 <= status < 300:
                    raise status_failure(request["url"], status)
                try:
                    text = body.decode()
                except UnicodeDecodeError:
                    raise fatal(f"GET {shown(request['url'])} answered with a body that is not UTF-8 text")
            else:
                text = request["csv"]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise fatal(f'input must be {{"csv": string, "delimiter"?: string}}: {error!r}')
        if not isinstance(text, str) or not isinstance(delimiter, str) or len(delimiter) != 1:
            raise fatal("csv must be a string and delimiter a single character")

        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        rows = list(reader)
        context = host.context()
        host.log(
            host.Level.INFO,
            f"parsed {len(rows)} rows (job {context.job_id}, attempt {context.attempt})",
        )
        result = {"count": len(rows), "columns": reader.fieldnames or [], "rows": rows}
        return json.dumps(result).encode()
