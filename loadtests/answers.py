"""The answers each Locust process received, one JSON line per request, one file per process.

The correctness check compares these lines with the journal, so a line is
written for every request sent, acknowledged or not: ``status`` is the HTTP
status, or 0 when no response came (connection error or timeout).
"""

from __future__ import annotations

import os
import pathlib
import socket
from typing import IO, Iterator

import msgspec


class Answer(msgspec.Struct, kw_only=True, omit_defaults=True):
    device_id: str
    tap_id: int
    # Traffic kind (loadtests.scenario.ALL_KINDS) and user class ("bus", "scenic", "venue").
    kind: str
    scenario: str
    medium: str
    # Unix milliseconds when the request was sent.
    sent_ms: int
    status: int
    decision: str | None = None
    reason: int | None = None
    journal_id: int | None = None
    rider_category: str | None = None
    fare_fen: int | None = None
    # True for a tap kept by a bus while offline and sent later in a batch upload.
    offline: bool = False

    @property
    def acknowledged(self) -> bool:
        """True when the gateway answered with a journaled decision."""
        return self.status == 200 and self.journal_id is not None


class AnswerLog:
    """Appends answers to ``answers-<host>-<pid>.jsonl`` in a directory, buffered."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        folder = pathlib.Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"answers-{socket.gethostname()}-{os.getpid()}.jsonl"
        self._file: IO[bytes] | None = open(self.path, "ab", buffering=1 << 16)  # noqa: SIM115
        self._encoder = msgspec.json.Encoder()

    def write(self, answer: Answer) -> None:
        if self._file is not None:
            self._file.write(self._encoder.encode(answer) + b"\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_answers(directory: str | os.PathLike[str]) -> Iterator[Answer]:
    """Yield every answer of every process file in ``directory``.

    A process that was killed may leave a last line cut short; such a line is
    skipped, since its request may or may not have been answered.
    """
    decoder = msgspec.json.Decoder(Answer)
    for path in sorted(pathlib.Path(directory).glob("answers-*.jsonl")):
        with open(path, "rb") as file:
            for line in file:
                if not line.endswith(b"\n"):
                    break
                yield decoder.decode(line)
