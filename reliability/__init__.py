"""Qiao's reliability and security proof suite: crash, tamper, fuzz, authorization, load and
network faults, with figures (RELIABILITY.md). ``make reliability`` runs it in full; ``make
test`` (and so CI) runs its short profile."""
