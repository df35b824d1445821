"""The exception tree: every reason it carries is a public outcome reason."""

from __future__ import annotations

import inspect

import pytest

from writeback import errors
from writeback.protocol import Reason

CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.WritebackError)
]


class TestTree:
    @pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
    def test_every_class_is_documented_in_the_module_docstring(self, cls: type) -> None:
        """The tree drawn in errors.py's docstring names every exception class."""
        assert cls.__name__ in (errors.__doc__ or "")

    @pytest.mark.parametrize(
        "cls", [c for c in CLASSES if hasattr(c, "reason")], ids=lambda c: c.__name__
    )
    def test_class_reasons_are_outcome_reasons(self, cls: type) -> None:
        """A class-level reason is one of the public reason codes."""
        assert Reason(cls.reason)

    def test_protocol_error_names_the_field(self) -> None:
        """A ProtocolError says which field, and its reason is a reason code."""
        error = errors.ProtocolError("request.malformed", "missing", "user")
        assert (str(error), Reason(error.reason)) == ("user: missing", Reason.REQUEST_MALFORMED)
