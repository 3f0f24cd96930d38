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
    against the queue's allowed hosts; a refusal arrives as an error code."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise fatal(f"url must start with http:// or https://: {url!r}")
    authority, _, path = rest.partition("/")
    request = http.OutgoingRequest(http.Fields())
    request.set_scheme(http.Scheme_Https() if scheme == "https" else http.Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query("/" + path)
    future = outgoing_handler.handle(request, None)
    while (answer := future.get()) is None:
        future.subscribe().block()
    if isinstance(answer.value, Err):
        code = answer.value.value
        retryable = not isinstance(code, http.ErrorCode_HttpRequestDenied)
        raise Err(TaskError(message=f"GET {scheme}://{authority}/{path.split('?')[0]}: {code}", retryable=retryable))
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
            raise Err(TaskError(message=f"reading {url!r} failed", retryable=True))
    return status, b"".join(chunks)


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
                if status != 200:
                    raise fatal(f"GET {request['url']!r} answered {status}")
                text = body.decode()
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
