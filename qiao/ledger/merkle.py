"""RFC 9162 §2.1 Merkle tree hashing and proofs: the tree of RFC 6962 and of every C2SP log.

Pure functions, no I/O. Proof generation reads the tree through ``get_hash(level, index)``,
the hash of the complete subtree of ``2**level`` leaves starting at leaf ``index * 2**level``:
exactly what a tlog-tiles store holds, so a proof never needs the whole tree in memory.
Verification raises :class:`ProofError` naming the size, index or hash that did not match.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Sequence

from qiao.ledger.errors import ProofError

HASH_SIZE = 32
# RFC 9162 §4 carries tree sizes and leaf indices as uint64 in its proof structures.
MAX_SIZE = 2**64 - 1
# RFC 9162 §2.1.1: "The hash of an empty list is the hash of an empty string".
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

GetHash = Callable[[int, int], bytes]
"""``get_hash(level, index)``: MTH(D[index * 2**level : (index + 1) * 2**level])."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])).

    The 0x00/0x01 prefixes keep a leaf from being passed off as an interior node.
    """
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[0:n]) (RFC 9162 §2.1.1) from the n leaf hashes; the empty tree is SHA-256("").

    Pairing neighbours level by level and carrying an odd last node up unchanged builds the
    same tree as the RFC's split at the largest power of two below n, without recursion.
    """
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ValueError(f"leaf hash {i} is {len(h)} bytes, not {HASH_SIZE}")
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def root_hash(size: int, get_hash: GetHash) -> bytes:
    """MTH(D[0:size]) (RFC 9162 §2.1.1) from the complete subtrees that ``get_hash`` serves."""
    _check_argument("tree size", size)
    if size == 0:
        return EMPTY_ROOT
    return _range_hash(0, size, get_hash)


def inclusion_proof(index: int, size: int, get_hash: GetHash) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, ordered from the leaf up to the root.

    Raises ValueError unless ``0 <= index < size``: asking for it is the caller's mistake.
    """
    _check_argument("leaf index", index)
    _check_argument("tree size", size)
    if index >= size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    # Walk down from the root; each step keeps the half holding the leaf and records the
    # other half's hash, so the siblings come out root-first and are reversed at the end.
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(_range_hash(start + k, end, get_hash))
            end = start + k
        else:
            path.append(_range_hash(start, start + k, get_hash))
            start += k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, get_hash: GetHash) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1; empty when the sizes are equal.

    Raises ValueError for ``old_size > new_size`` and for ``old_size == 0 < new_size``: every
    tree extends the empty tree, so there is nothing to prove and verification rejects it.
    """
    _check_argument("old tree size", old_size)
    _check_argument("new tree size", new_size)
    if old_size > new_size:
        raise ValueError(f"old tree size {old_size} is larger than new tree size {new_size}")
    if old_size == new_size:
        return []
    if old_size == 0:
        raise ValueError("no consistency proof exists from the empty tree (size 0)")
    # SUBPROOF(m, D[start:end], complete), unrolled. `complete` stays true while the old tree
    # is a left prefix the verifier already holds (its own root), so that hash is left out.
    path: list[bytes] = []
    start, end, complete = 0, new_size, True
    while True:
        if old_size == end:
            if not complete:
                path.append(_range_hash(start, end, get_hash))
            break
        k = _split(end - start)
        if old_size - start <= k:
            path.append(_range_hash(start + k, end, get_hash))
            end = start + k
        else:
            path.append(_range_hash(start, start + k, get_hash))
            start += k
            complete = False
    path.reverse()
    return path


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` leads to from ``leaf_hash`` (RFC 9162 §2.1.3.2, steps 1-4).

    Raises ProofError when the proof cannot belong to a leaf ``index`` in a tree of ``size``.
    """
    _check_uint64("leaf index", index)
    _check_uint64("tree size", size)
    # Step 1.
    if index >= size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    if len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash is {len(leaf_hash)} bytes, not {HASH_SIZE}")
    _check_proof_hashes("inclusion", proof)
    # The loop below also fails a proof of the wrong length; checking first names the lengths.
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise ProofError(
            f"inclusion proof has {len(proof)} hashes, but leaf {index} in a tree of size "
            f"{size} needs {inner + border}"
        )
    # Steps 2-4: fn walks the leaf's position up the tree, sn the last leaf's position.
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # On the right border a left child may have no sibling; skip the levels where
            # it is carried up unchanged.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # Step 5, first half: the proof must reach the root.
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise ProofError unless ``proof`` puts the leaf under ``root``."""
    calculated = root_from_inclusion_proof(index, size, leaf_hash, proof)
    # Step 5, second half.
    if calculated != root:
        raise ProofError(
            f"inclusion proof for leaf {index} leads to root {_b64(calculated)}, "
            f"not the expected root {_b64(root)} of the tree of size {size}"
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """RFC 9162 §2.1.4.2: raise ProofError unless the new tree extends the old one.

    Equal sizes (outside the RFC, which covers 0 < old < new) need an empty proof and equal
    roots; at size 0 the only root is SHA-256(""), so a witness never accepts another.
    """
    _check_uint64("old tree size", old_size)
    _check_uint64("new tree size", new_size)
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} is larger than new tree size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError(
                f"trees of equal size {old_size} need an empty consistency proof, "
                f"got {len(proof)} hashes"
            )
        if old_root != new_root:
            raise ProofError(
                f"trees of equal size {old_size} have different roots: "
                f"old {_b64(old_root)}, new {_b64(new_root)}"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError(
                f"the empty tree's root is {_b64(EMPTY_ROOT)} (RFC 9162 §2.1.1), "
                f"not {_b64(old_root)}"
            )
        return
    if old_size == 0:
        raise ProofError(
            f"no consistency proof exists from the empty tree to size {new_size}; "
            "every tree extends it"
        )
    # Step 1.
    if not proof:
        raise ProofError(f"empty consistency proof from size {old_size} to size {new_size}")
    _check_proof_hashes("consistency", proof)
    want = _consistency_proof_length(old_size, new_size)
    if len(proof) != want:
        raise ProofError(
            f"consistency proof has {len(proof)} hashes, but sizes {old_size} to {new_size} "
            f"need {want}"
        )
    path = list(proof)
    # Step 2: an old tree of 2**k leaves is itself a subtree of the new one; the proof leaves
    # it out because the verifier already holds its root.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # Steps 3-4: start from the largest complete subtree that ends at the old tree's last leaf.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Steps 5-6: fr rebuilds the old root, sr the new one, from the same hashes.
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the new root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the new root")
    if fr != old_root:
        raise ProofError(
            f"consistency proof leads to old root {_b64(fr)}, not the expected "
            f"{_b64(old_root)} of size {old_size}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof leads to new root {_b64(sr)}, not the expected "
            f"{_b64(new_root)} of size {new_size}"
        )


class MemoryTree:
    """Leaf hashes and every complete subtree hash above them, in RAM, for tests and tools.

    ``get_hash`` serves the same (level, index) hashes that tiles will, so code tested
    against a MemoryTree runs unchanged against a tile store.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf hash; returns its index. Completes the subtrees it closes, bottom up."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, not {HASH_SIZE}")
        index = self.size
        self._levels[0].append(leaf_hash)
        level = 0
        while len(self._levels[level]) % 2 == 0:
            if level + 1 == len(self._levels):
                self._levels.append([])
            below = self._levels[level]
            self._levels[level + 1].append(node_hash(below[-2], below[-1]))
            level += 1
        return index

    def get_hash(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or level >= len(self._levels):
            raise IndexError(f"no subtree at level {level}, index {index}")
        hashes = self._levels[level]
        if index >= len(hashes):
            raise IndexError(
                f"the subtree at level {level}, index {index} is not complete in a tree of "
                f"size {self.size}"
            )
        return hashes[index]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (all of them by default)."""
        size = self.size if size is None else size
        if size > self.size:
            raise ValueError(f"tree size {size} is larger than the {self.size} leaves held")
        return root_hash(size, self.get_hash)


def _split(n: int) -> int:
    """RFC 9162 §2.1.1: k, the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(start: int, end: int, get_hash: GetHash) -> bytes:
    """MTH(D[start:end]) for a subtree of the RFC tree.

    Such a subtree is either complete (2**level leaves, aligned, served by ``get_hash``) or
    splits like the whole tree into a complete left part and a smaller right part.
    """
    n = end - start
    if n & (n - 1) == 0:
        level = n.bit_length() - 1
        return get_hash(level, start >> level)
    k = _split(n)
    return node_hash(_range_hash(start, start + k, get_hash), _range_hash(start + k, end, get_hash))


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Lengths of an inclusion proof's two parts (as in transparency-dev/merkle).

    ``inner``: levels below the point where the paths to ``index`` and to the last leaf
    ``size - 1`` join; ``border``: left siblings on the right border above it.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _consistency_proof_length(old_size: int, new_size: int) -> int:
    """A consistency proof is the upper part of the last old leaf's inclusion proof in the new
    tree, above the largest complete subtree ending there, plus that subtree's own hash unless
    it is the whole old tree (RFC 9162 §2.1.4.2 step 2)."""
    inner, border = _decompose(old_size - 1, new_size)
    shift = (old_size & -old_size).bit_length() - 1
    seed = 0 if old_size == 1 << shift else 1
    return seed + inner - shift + border


def _check_uint64(what: str, value: int) -> None:
    if not 0 <= value <= MAX_SIZE:
        raise ProofError(f"{what} {value} is not a uint64 (RFC 9162 §4)")


def _check_argument(what: str, value: int) -> None:
    if not 0 <= value <= MAX_SIZE:
        raise ValueError(f"{what} {value} is not a uint64 (RFC 9162 §4)")


def _check_proof_hashes(kind: str, proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            raise ProofError(f"{kind} proof hash {i} is {len(h)} bytes, not {HASH_SIZE}")


def _b64(value: bytes) -> str:
    # Checkpoints show roots in base64 (C2SP tlog-checkpoint), so errors use it too.
    return base64.b64encode(value).decode()
