"""Sharing requests and agreements: the machine-enforced contracts between departments."""
