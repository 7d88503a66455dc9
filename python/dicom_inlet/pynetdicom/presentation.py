"""Presentation contexts as pynetdicom builds them (``build_context``,
``StoragePresentationContexts``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pydicom.uid import UID

from dicom_inlet.pynetdicom.sop_class import STORAGE_CLASSES

__all__ = [
    "DEFAULT_TRANSFER_SYNTAXES",
    "PresentationContext",
    "PresentationContextTuple",
    "StoragePresentationContexts",
    "VerificationPresentationContexts",
    "build_context",
]

#: pynetdicom's default transfer syntaxes of a context: the uncompressed ones.
DEFAULT_TRANSFER_SYNTAXES: list[str] = [
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
]
# An association proposes at most 128 presentation contexts (PS3.8 §9.3.2.2: odd ids 1-255).
MAX_CONTEXTS = 128


class PresentationContextTuple(NamedTuple):
    """The context an event came on (``event.context``)."""

    context_id: int
    abstract_syntax: UID
    transfer_syntax: UID


@dataclass
class PresentationContext:
    """An abstract syntax and the transfer syntaxes proposed or supported for it."""

    abstract_syntax: UID
    transfer_syntax: list[UID] = field(default_factory=list)
    context_id: int | None = None

    def add_transfer_syntax(self, syntax: str) -> None:
        """Add a transfer syntax (once)."""
        uid = UID(syntax)
        if uid not in self.transfer_syntax:
            self.transfer_syntax.append(uid)

    def __str__(self) -> str:
        syntaxes = "\n".join(f"    ={UID(s).name}" for s in self.transfer_syntax)
        return (
            f"Abstract Syntax: {UID(self.abstract_syntax).name}\nTransfer Syntax(es):\n{syntaxes}"
        )


def build_context(
    abstract_syntax: str, transfer_syntax: str | Sequence[str] | None = None
) -> PresentationContext:
    """A presentation context for ``abstract_syntax`` in ``transfer_syntax`` (one UID or a
    list; default :data:`DEFAULT_TRANSFER_SYNTAXES`)."""
    if transfer_syntax is None:
        transfer_syntax = DEFAULT_TRANSFER_SYNTAXES
    elif isinstance(transfer_syntax, str):
        transfer_syntax = [transfer_syntax]
    context = PresentationContext(UID(abstract_syntax))
    for syntax in transfer_syntax:
        context.add_transfer_syntax(syntax)
    return context


def _storage_contexts() -> list[PresentationContext]:
    # The storage classes in registry order, as many as one association can propose.
    ordered = sorted(STORAGE_CLASSES.values(), key=lambda uid: [int(p) for p in uid.split(".")])
    return [build_context(uid) for uid in ordered[: MAX_CONTEXTS - 8]]


#: Contexts for the storage SOP classes, uncompressed syntaxes, within one association's
#: 128 (the first 120 in UID order, as pynetdicom keeps 120).
StoragePresentationContexts: list[PresentationContext] = _storage_contexts()
#: The Verification SOP Class context.
VerificationPresentationContexts: list[PresentationContext] = [build_context("1.2.840.10008.1.1")]
