"""The errors (and the one warning) every data module raises for missing or malformed data.

Everything a loader raises about the data itself is a :class:`DataError`, so a caller (the CLI)
can catch one class and print its message: each message is one paragraph that names the file,
the line or record, what was expected and what was found.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["DataError", "DataFormatError", "DataNotFoundError", "SkippedRowsWarning"]


def _show(value: object, limit: int = 80) -> str:
    """A short, printable rendering of an offending value (bytes and long strings are clipped)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DataError(Exception):
    """Base class: the data on disk is missing or does not match its official format."""


class DataFormatError(DataError):
    """A file exists but a line or record in it is not in the expected format.

    ``line_or_record`` is the 1-based line number of a text file, or a record label such as
    ``"record 17"`` or ``"sample_3.png"``; ``None`` when the whole file is at fault.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        line_or_record: int | str | None,
        expected: str,
        got: object = None,
    ) -> None:
        self.path = str(path)
        self.line_or_record = line_or_record
        self.expected = expected
        self.got = got
        if line_or_record is None:
            where = f"{self.path}"
        elif isinstance(line_or_record, int):
            where = f"{self.path}, line {line_or_record}"
        else:
            where = f"{self.path}, {line_or_record}"
        message = f"Malformed data in {where}: expected {expected}"
        if got is not None:
            message += f", got {_show(got)}"
        super().__init__(message + ".")


class DataNotFoundError(DataError):
    """A data directory or file is missing: says where it was looked for and how to get it."""

    def __init__(
        self, expected_path: str | PathLike[str], layout_hint: str, download_hint: str
    ) -> None:
        self.expected_path = str(expected_path)
        self.layout_hint = layout_hint
        self.download_hint = download_hint
        super().__init__(
            f"Data not found: expected {self.expected_path}. {layout_hint.rstrip('.')}. "
            f"{download_hint.rstrip('.')}."
        )


class SkippedRowsWarning(UserWarning):
    """Malformed rows were skipped because the data module was built with ``on_bad_row="skip"``."""


class TruncatedRowsWarning(UserWarning):
    """Rows longer than the data module's ``truncate_length`` were cut to it (with the count)."""
