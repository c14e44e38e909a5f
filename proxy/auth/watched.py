"""A small file (token, password, htpasswd) re-read when it changes.

Kubernetes projected service-account tokens and Vault agent sinks are rotated by
replacing the file (often by swapping a symlink), so the file is identified by
inode, size and modification time, looked at no more than once per ``interval``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from proxy.settings import SettingsError, option_flag

log = logging.getLogger("dicomweb_proxy.auth")

Signature = tuple[int, int, int]


class WatchedFile:
    """The current text of ``path``; raises SettingsError naming ``option`` at start-up.

    A file that becomes unreadable later keeps its last good content (and a warning
    is logged, without the content): a rotation in progress must not break requests.
    """

    def __init__(
        self,
        path: str,
        option: str,
        *,
        interval: float = 1.0,
        allow_empty: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.option = option
        self.version = 0
        self._interval = interval
        self._allow_empty = allow_empty
        self._clock = clock
        try:
            self._signature = _signature(path)
            self._text = _read(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{option_flag(option)}: cannot read {path}: {_why(exc)}") from None
        if not allow_empty and not self._text.strip():
            raise SettingsError(f"{option_flag(option)}: {path} is empty")
        self._checked_at = clock()

    def __repr__(self) -> str:
        return f"WatchedFile({self.path!r}, version={self.version})"

    def text(self, *, force: bool = False) -> str:
        """The content, refreshed if the file changed since the last look."""
        now = self._clock()
        if force or now - self._checked_at >= self._interval:
            self._checked_at = now
            self._refresh()
        return self._text

    def _refresh(self) -> None:
        try:
            signature = _signature(self.path)
            if signature == self._signature:
                return
            text = _read(self.path)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning(
                "%s: cannot re-read %s (%s); keeping the previous value",
                option_flag(self.option),
                self.path,
                _why(exc),
            )
            return
        if not self._allow_empty and not text.strip():
            return  # caught between truncate and write: look again next time
        self._signature, self._text = signature, text
        self.version += 1
        log.info("%s: %s changed; reloaded", option_flag(self.option), self.path)


def _signature(path: str) -> Signature:
    stat = os.stat(path)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "not UTF-8 text"


def first_line(text: str) -> str:
    """A secret file holds its secret on the first line (a trailing newline is common)."""
    return text.strip().splitlines()[0].strip() if text.strip() else ""


class Secret:
    """A secret given inline (``--x``) or by file (``--x-file``, re-read on change).

    Its ``repr`` never shows the value, so it is safe in tracebacks and debug logs.
    """

    def __init__(self, inline: str | None = None, file: WatchedFile | None = None) -> None:
        if (inline is None) == (file is None):
            raise ValueError("a secret needs exactly one of a value and a file")
        self._inline = inline
        self._file = file

    def __repr__(self) -> str:
        return f"Secret(file={self._file.path!r})" if self._file else "Secret('***')"

    @property
    def rotates(self) -> bool:
        return self._file is not None

    def value(self, *, force: bool = False) -> str:
        if self._file is not None:
            return first_line(self._file.text(force=force))
        return self._inline or ""
