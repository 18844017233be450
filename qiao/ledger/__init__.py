"""The ledger: a transparency log that every department can check for itself.

This package starts with the protocol groundwork, as pure functions with no I/O:

- ``merkle``: RFC 9162 §2.1 tree hashing, inclusion and consistency proofs.
- ``note``: C2SP signed-note, tlog-checkpoint and tlog-cosignature/v1 (Ed25519).
- ``tiles``: C2SP tlog-tiles resource paths and entry bundles.
- ``errors``: the typed failures of all three.
"""
