"""6.1.3 / 6.2.2: JSON-lines files, loaded fast with `datasets` and validated with precise errors.

Both of the chapter's formats are JSON lines: `{"text": ...}` for pretraining and
`{"conversations": [...], "id": ...}` for SFT. The Arrow loader is fast but its errors name
neither the line nor the fix; when it fails, a plain scan finds the first bad line instead.
On the scripts' training path: every data file a script reads goes through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import pyarrow

from llmtrain.errors import LlmtrainError

RecordCheck = Callable[[Any, str, int], None]


def check_file(path: str, hint: str) -> None:
    """Fail early, naming the file, when it is missing or empty."""
    if not os.path.isfile(path):
        raise LlmtrainError(f"{path}: no such file. Pass --train_files with existing JSON-lines files.")
    if os.path.getsize(path) == 0:
        raise LlmtrainError(f"{path} is empty: {hint}.")


def iter_jsonl(path: str, hint: str) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed record) for every non-blank line; the first bad line is an error."""
    check_file(path, hint)
    found = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise LlmtrainError(
                    f"{path} line {lineno}: not valid UTF-8 (byte {err.start + 1} of the line); "
                    "save the file as UTF-8 (e.g. `iconv -f GBK -t UTF-8`)."
                ) from err
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise LlmtrainError(f"{path} line {lineno}: not valid JSON ({err.msg}); {hint}.") from err
            found = True
            yield lineno, record
    if not found:
        raise LlmtrainError(f"{path} has no data lines (only blank lines): {hint}.")


def load_jsonl(files: list[str], column: str, check_record: RecordCheck, hint: str) -> datasets.Dataset:
    """Load JSON-lines `files` into one Dataset that has a non-null `column` on every row.

    `check_record(record, path, lineno)` raises for a record that lacks a usable `column`; it is
    only run (by a scan of the files) when the fast loader fails or the column has gaps.
    """
    for path in files:
        check_file(path, hint)

    def scan() -> None:
        for path in files:
            for lineno, record in iter_jsonl(path, hint):
                check_record(record, path, lineno)

    try:
        ds = datasets.load_dataset("json", data_files=list(files), split="train")
    except Exception as err:  # the Arrow reader's message names neither line nor fix
        scan()
        raise LlmtrainError(f"Cannot read {', '.join(files)} as JSON lines ({err}); {hint}.") from err
    if column not in ds.column_names or ds.data.column(column).null_count:
        scan()
        raise LlmtrainError(f"Some records of {', '.join(files)} have no usable {column!r} field; {hint}.")
    try:  # the Arrow reader keeps invalid UTF-8 bytes as they are; a full validation finds them
        ds.data.table.validate(full=True)
    except pyarrow.ArrowInvalid as err:
        scan()
        raise LlmtrainError(f"{', '.join(files)}: not valid UTF-8 ({err}); save the files as UTF-8.") from err
    return ds


def load_normalized_jsonl(files: list[str], normalize: Callable[[Any], dict], hint: str) -> datasets.Dataset:
    """Every record of `files` through `normalize` (which raises LlmtrainError on a bad one), as one Dataset.

    The first bad record stops the load, its error prefixed with the file and line; nothing is returned half-read.
    """
    rows = []
    for path in files:
        for lineno, record in iter_jsonl(path, hint):
            try:
                rows.append(normalize(record))
            except LlmtrainError as err:
                raise LlmtrainError(f"{path} line {lineno}: {err}; {hint}.") from None
    return datasets.Dataset.from_list(rows)


def preview(record: Any) -> str:
    """A short rendering of a record for error messages."""
    text = json.dumps(record, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
