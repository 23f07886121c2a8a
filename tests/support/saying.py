"""Errors are data (a reason and its particulars); what people are told of them is bot/texts.py's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bot import texts
from model_store.errors import ModelStoreError, Reasoned


def said(error: Reasoned) -> str:
    """The sentence people get for ``error``."""
    if isinstance(error, ModelStoreError):
        return texts.store_error(error.reason, error.data)
    return texts.refusal(error.reason, error.data)


@contextmanager
def raises_saying(kind: type[Reasoned], pattern: str) -> Iterator[None]:
    """``pytest.raises(kind, match=pattern)``, matched against what people are told of the error."""
    with pytest.raises(kind) as caught:
        yield
    assert re.search(pattern, said(caught.value)), said(caught.value)
