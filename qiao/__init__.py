"""Qiao (桥): a data exchange layer for public administration."""

__version__ = "0.1.0"
