"""Converts CSV text into JSON records: a TaskFlow task written in Python.

Input:  {"csv": "name,age\\nAda,36\\n", "delimiter": ","}   (delimiter optional)
Output: {"count": 1, "columns": ["name", "age"], "rows": [{"name": "Ada", "age": "36"}]}

Built into a component of the taskflow:task world by componentize-py
(see build.sh); it uses only Python's standard library.
"""

import csv
import io
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.taskflow_task_types import TaskError


def fatal(message: str) -> Err:
    """A failure no retry can fix: the job is dead-lettered at once."""
    return Err(TaskError(message=message, retryable=False))


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        try:
            request = json.loads(input)
            text = request["csv"]
            delimiter = request.get("delimiter", ",")
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
