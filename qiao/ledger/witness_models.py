"""The node's witness tables: what it last cosigned for each log, and what it caught.

A C2SP tlog-witness needs only the latest checkpoint it cosigned per log origin
(c2sp.org/tlog-witness "Introduction"); the alerts keep the evidence when a log shows it a
history that does not extend that checkpoint.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from qiao.db import NodeBase, UTCDateTime, utcnow

# Checkpoint origins are single text lines; log origins in practice are short URL-like names.
MAX_ORIGIN = 255


class WitnessState(NodeBase):
    """The latest checkpoint this witness cosigned for one log (size 0: none yet)."""

    __tablename__ = "witness_state"

    origin: Mapped[str] = mapped_column(String(MAX_ORIGIN), primary_key=True)
    # Signed 64-bit: the witness refuses sizes above 2^63 - 1 rather than overflow here.
    size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # The log-signed note as received, so a later fork can be shown with both signed heads.
    checkpoint: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WitnessAlert(NodeBase):
    """A log that signed something inconsistent with what this witness cosigned before."""

    __tablename__ = "witness_alerts"
    __table_args__ = (Index("ix_witness_alerts_origin", "origin"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    origin: Mapped[str] = mapped_column(String(MAX_ORIGIN))
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    # The whole add-checkpoint request (proof and log-signed checkpoint): the evidence.
    evidence: Mapped[bytes] = mapped_column(LargeBinary)
    # The log-signed checkpoint the witness had cosigned then: with the evidence, the pair of
    # signed heads that an auditor checks against each other and the log's tiles.
    cosigned: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
