"""What an import reports: per input its ids or its error, and the skipped inputs grouped by reason."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IngestError:
    index: int  # position of the input
    source: str | None  # its file URI, when it was a path
    message: str
    error: str  # the exception's type name


@dataclass
class IngestResult:
    ids: list[list[str] | None]  # per input: its row ids in order (an audio file: one per 30 s window)
    errors: list[IngestError] = field(default_factory=list)
    commits: int = 0
    rows: int = 0  # rows committed
    existing: int = 0  # inputs the namespace held already (their ids are the stored memories')
    seconds: float = 0.0

    @property
    def added(self) -> int:
        """Inputs stored (or held already)."""
        return sum(1 for i in self.ids if i is not None)

    def skipped(self, names: list[str]) -> list[str]:
        """The skipped inputs (``names[index]``) grouped by reason, one line per reason, most first:
        ``2 images (a.png, b.jpg): <reason>``: the reason once, at most three names."""
        import mimetypes

        groups: dict[str, list[str]] = {}
        for e in self.errors:
            groups.setdefault(e.message, []).append(names[e.index])
        lines = []
        for reason, who in sorted(groups.items(), key=lambda g: -len(g[1])):
            kinds = {(mimetypes.guess_type(n)[0] or "").partition("/")[0] for n in who}
            noun = {"image": "image", "audio": "audio file", "text": "text file"}.get(kinds.pop(), "file")
            noun = noun if not kinds else "file"
            shown = ", ".join(who[:3]) + (f" and {len(who) - 3} more" if len(who) > 3 else "")
            lines.append(f"{plural(len(who), noun)} ({shown}): {reason}")
        return lines


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"
