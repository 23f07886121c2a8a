"""PDF pages as images for the model: the pages a question names (or the first ones), rendered for reading.

Why pypdfium2: PDFium, the renderer in Chrome, in a wheel that needs nothing else installed; it tells an
encrypted file from a damaged one, and reads only the pages asked for, so a document of thousands of pages
costs no more than one of four.  PDFium is not thread-safe, so one lock serialises every call into it.

Why this resolution: the engine pads each image into the square grid of 336-pixel crops that ``NUM_CROPS``
allows (engine/images.py), so a page rendered with its long side at that grid's width reaches the model
without being scaled again; more pixels would be thrown away and fewer would blur small print.  Whatever the
page size a file declares (PDF allows pages of 200 inches), the rendered page is that big and no bigger.
"""

from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass

import pypdfium2 as pdfium

from bot.media.refusal import Refusal
from engine.images import grid_side

PASSWORD_ERROR = 4  # FPDF_ERR_PASSWORD
_PDFIUM = threading.Lock()
_NAMED = re.compile(r"\b(?:pages?|pp?\.|pg\.?)\s*(\d+(?:\s*(?:-|–|—|to|and|&|,|or)\s*\d+)*)", re.IGNORECASE)
_LAST = re.compile(r"\blast\s+page\b", re.IGNORECASE)
PDF_MIME = "application/pdf"
NAMED_MAX = 1000  # pages one range of a question may name


class DocumentError(Refusal):
    """Why a PDF cannot be read."""


class NoSuchPage(DocumentError):
    """The question names pages the PDF does not have: a refusal of the question, not of the file."""

    REASON = "no_such_page"

    def __init__(self, count: int, page: int) -> None:
        super().__init__(self.REASON, count=count, page=page)


@dataclass(frozen=True)
class Pages:
    """The pages rendered for one question."""

    numbers: tuple[int, ...]  # 1-based, in the order the model gets them
    count: int  # pages in the document
    images: tuple[bytes, ...]  # PNG, one per number


def named_pages(question: str, count: int) -> list[int]:
    """The pages a question names ("page 3", "pages 2-4", "p. 5 and 7", "the last page"), in order, each
    once; ranges are taken as far as the document goes, and no further than ``NAMED_MAX`` pages each, so a
    caption of a hundred ranges over a million-page document costs no more than a short one."""
    numbers: dict[int, None] = {}
    for match in _NAMED.finditer(question):
        for part in re.split(r"\s*(?:and|&|,|or)\s*", match.group(1), flags=re.IGNORECASE):
            ends = [int(n) for n in re.split(r"\s*(?:-|–|—|to)\s*", part, flags=re.IGNORECASE) if n]
            first, last = ends[0], min(ends[-1], max(count, ends[0]), ends[0] + NAMED_MAX - 1)
            numbers.update(dict.fromkeys(range(first, last + 1) if first <= last else [first]))
    if _LAST.search(question):
        numbers[count] = None
    return list(numbers)


def names_pages(question: str) -> bool:
    return bool(_NAMED.search(question) or _LAST.search(question))


def chosen_pages(question: str, count: int, limit: int) -> list[int]:
    """Up to ``limit`` pages: those the question names, otherwise the first ones.  A question naming only
    pages the document does not have is refused rather than answered about other pages."""
    named = named_pages(question, count)
    if not named:
        return list(range(1, min(count, limit) + 1))
    present = [number for number in named if 1 <= number <= count]
    if not present:
        raise NoSuchPage(count, named[0])
    return present[:limit]


def render(data: bytes, question: str, *, limit: int, num_crops: int) -> Pages:
    """The question's pages of the PDF in ``data`` as PNG images; raises DocumentError for what cannot be read."""
    side = grid_side(num_crops)
    with _PDFIUM:
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as error:
            if getattr(error, "err_code", None) == PASSWORD_ERROR:
                raise DocumentError("pdf_password") from error
            raise DocumentError("pdf_damaged") from error
        try:
            count = len(document)
            if count == 0:
                raise DocumentError("pdf_empty")
            numbers = chosen_pages(question, count, limit)
            images = tuple(_render_page(document, number, side) for number in numbers)
        except pdfium.PdfiumError as error:
            raise DocumentError("pdf_unrendered") from error
        finally:
            document.close()
    return Pages(tuple(numbers), count, images)


def _render_page(document: pdfium.PdfDocument, number: int, side: int) -> bytes:
    page = document[number - 1]
    try:
        width, height = page.get_size()
        if not (width > 0 and height > 0):
            raise DocumentError("page_without_size", page=number)
        image = page.render(scale=side / max(width, height)).to_pil().convert("RGB")
    finally:
        page.close()
    out = io.BytesIO()
    image.save(out, "PNG", optimize=False)
    return out.getvalue()


def page_list(numbers: tuple[int, ...]) -> str:
    """ "1-4", "3", "1 and 2", "2, 5 and 7": pages as people write them."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    parts = [part for run in runs for part in ([f"{run[0]}-{run[-1]}"] if len(run) > 2 else map(str, run))]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
