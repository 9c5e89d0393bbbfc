"""Workbooks (.xlsx, openpyxl in read-only mode, which streams rows) and CSV files (the standard
library's csv): sheet by sheet, each row as `header: value` lines under its sheet's first row.

A workbook is one page per sheet (`Page.number` is the sheet's position), so a hit names its sheet.
Cells are counted as they are read, empty ones in a row included, and a file past `max_cells` fails
before the rest is read: a million-row sheet costs the time of `max_cells` cells, not its size.
"""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Iterable, Iterator, Sequence

from ..base import Page
from ..errors import DocumentError
from . import FormatLimits, Parsed, unreadable_as
from .archive import open_office_zip

CSV_SNIFF_BYTES = 64 * 1024
CSV_DELIMITERS = ",;\t|"


class CellBudget:
    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def spend(self, cells: int, where: str) -> None:
        self.used += cells
        if self.used > self.limit:
            raise DocumentError(f"more than max_cells = {self.limit} cells ({where}): raise max_cells on the "
                                "source, or exclude the file")


def read_xlsx(data: bytes, limits: FormatLimits) -> Parsed:
    open_office_zip(data, limits, "Excel").close()
    import openpyxl  # uses defusedxml for its XML when it is installed (it is a dependency)

    budget = CellBudget(limits.max_cells)
    with unreadable_as("Excel file"):
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            pages = []
            for number, sheet in enumerate(workbook.worksheets, 1):
                body = rows_as_text(sheet.iter_rows(values_only=True), budget, f"sheet {sheet.title!r}")
                pages.append(Page(number, f"Sheet: {sheet.title}\n\n{body}" if body else ""))
            title = workbook.properties.title
        finally:
            workbook.close()
    if not pages:
        raise DocumentError("Excel file has no worksheets")
    return Parsed(tuple(pages), title or None)


def read_csv(data: bytes, limits: FormatLimits) -> Parsed:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"CSV file is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    try:
        dialect = csv.Sniffer().sniff(text[:CSV_SNIFF_BYTES], delimiters=CSV_DELIMITERS)
    except csv.Error:
        dialect = csv.excel
    with unreadable_as("CSV file"):
        body = rows_as_text(csv.reader(io.StringIO(text, newline=""), dialect), CellBudget(limits.max_cells),
                            "the file")
    return Parsed((Page(None, body),))


def rows_as_text(rows: Iterable[Sequence[object]], budget: CellBudget, where: str) -> str:
    """The rows under the first one that has a value (the header), each as `header: value` lines for its
    cells that hold a value; rows apart by a blank line."""
    return "\n\n".join(_records(rows, budget, where))


def _records(rows: Iterable[Sequence[object]], budget: CellBudget, where: str) -> Iterator[str]:
    header: list[str] | None = None
    records = 0
    for index, row in enumerate(rows, 1):
        budget.spend(len(row), f"{where} reached it at row {index}")
        values = [_cell(value) for value in row]
        if header is None:
            if any(values):
                header = [name or f"column {position}" for position, name in enumerate(values, 1)]
            continue
        lines = [f"{header[position] if position < len(header) else f'column {position + 1}'}: {value}"
                 for position, value in enumerate(values) if value]
        if lines:
            records += 1
            yield "\n".join(lines)
    if header is not None and not records:  # a sheet of one row: its values are the text
        yield " | ".join(name for name in header if not name.startswith("column "))


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return " ".join(str(value).split())
