"""What a question shows the model, and how the model, the status and the answer speak of it.

Photos need no words.  A PDF's pages and a clip's frames do: the model is told which pages or moments it
sees ("[The images are pages 1-4 of a 12-page PDF.]" before the question), the status says what it reads,
and the answer ends with the same.  That first line is stored with the question, so a follow-up, a retry
and a restart know what the images were; ``Material.recalled`` reads it back, and this module is the one
place that writes and reads it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bot import texts
from bot.history import NewImage
from bot.media.frames import Frames
from bot.media.pages import Pages, named_pages, page_list
from engine.conversation import Turn

Kind = Literal["image", "pdf", "clip", "sound"]  # "sound": a recording, heard as the question (bot/media/intake.py)
_CONTEXT = re.compile(r"^\[The (?:image is|images are) (?P<which>.+?) of (?P<whole>a .+)\.\]$")
_PDF_PAGES = re.compile(r"^a (?P<count>\d+)-page PDF$")


@dataclass(frozen=True)
class Material:
    """The images a question brings that are new to the history, and, for a PDF or a clip, what they are."""

    images: list[NewImage] = field(default_factory=list)
    which: str = ""  # "pages 1-4", "page 3", "4 frames", "one frame"; "" for photos
    whole: str = ""  # what they are of: "a 12-page PDF", "a 0:10 video, at 0:01, 0:04, 0:06, 0:09"
    kind: Kind = "image"
    gone: bool = False  # a text question straight after a photo that is no longer stored (bot/answers/context_view.py)

    @property
    def context(self) -> str:
        """Told to the model before the question."""
        if not self.which:
            return ""
        verb = "image is" if self.which.startswith(("page ", "one ")) else "images are"
        return f"[The {verb} {self.which} of {self.whole}.]"

    @property
    def label(self) -> str:
        """For the status while the model reads: "pages 1-4 of a 12-page PDF"."""
        return f"{self.which} of {self.whole.split(', at ')[0]}" if self.which else ""

    @property
    def note(self) -> str:
        """Under the answer: the pages or moments it looked at, or that the photo asked about is gone."""
        if self.gone:
            return texts.IMAGE_GONE_NOTE
        if not self.which:
            return ""
        return texts.looked_at(self.kind == "pdf", self.which, self.whole)

    @property
    def asks(self) -> str:
        """The question when none was typed."""
        return ask_about(self.kind)

    def told(self, question: str) -> str:
        """The question as the model gets it, and as it is stored: what the images are, first."""
        return f"{self.context}\n{question}" if self.context else question

    @classmethod
    def recalled(cls, stored: str) -> Material:
        """What a stored question's images were, from its first line (no images: they are in the history)."""
        match = _CONTEXT.match(stored.split("\n", 1)[0])
        if match is None:
            return cls()
        whole = match["whole"]
        return cls(which=match["which"], whole=whole, kind="pdf" if _PDF_PAGES.match(whole) else "clip")


def ask_about(kind: Kind) -> str:
    return {"pdf": texts.SUMMARISE_PAGES, "clip": texts.DESCRIBE_CLIP}.get(kind, texts.DESCRIBE)


def of_pages(found: Pages, images: list[NewImage]) -> Material:
    listed = page_list(found.numbers)
    which = f"page {listed}" if len(found.numbers) == 1 else f"pages {listed}"
    return Material(images, which, f"a {found.count}-page PDF", "pdf")


def of_frames(found: Frames, name: str, images: list[NewImage]) -> Material:
    which = "one frame" if len(found.images) == 1 else f"{len(found.images)} frames"
    times = ", ".join(texts.clock(second, tenths=found.duration < 10) for second in found.seconds)
    return Material(images, which, f"a {texts.clock(found.duration, tenths=True)} {name}, at {times}", "clip")


def unseen_pages(question: str, past: Sequence[Turn]) -> str | None:
    """When a question without a file names pages of the PDF in view that the model was not shown, what to
    tell the person instead of letting the model answer about pages it cannot see; None otherwise."""
    latest = next((turn for turn in reversed(past) if turn.role == "user" and turn.images), None)
    if latest is None:
        return None
    shown = Material.recalled(latest.text)
    count = _PDF_PAGES.match(shown.whole) if shown.kind == "pdf" else None
    if count is None:
        return None
    total = int(count["count"])
    asked = named_pages(question, total)
    missing = [number for number in asked if not 1 <= number <= total]
    if missing:
        return texts.no_such_page(total, missing[0])
    if set(asked) <= set(named_pages(shown.which, total)):
        return None
    return texts.pages_not_in_view(shown.which, total)
