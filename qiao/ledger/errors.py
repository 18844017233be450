"""Typed ledger failures: each message says exactly what did not match.

Verification code raises these instead of returning booleans, so a caller cannot forget to
check, and an auditor reading a log line learns which hash, size or key was wrong.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class: anything about the ledger's data that failed a check."""


class ProofError(LedgerError):
    """An inclusion or consistency proof (RFC 9162 §2.1.3, §2.1.4) that does not verify."""


class NoteError(LedgerError):
    """A signed note, checkpoint or cosignature (C2SP) that is malformed or does not verify."""


class TileError(LedgerError):
    """A tile path or entry bundle (C2SP tlog-tiles) that is malformed."""


class PolicyError(LedgerError):
    """A tlog-policy (C2SP) that is malformed, or a checkpoint from a log it does not list."""


class ReceiptError(LedgerError):
    """A receipt (C2SP tlog-proof) that is malformed or does not prove what it claims."""
