"""The web console: the exchange's pages for operators, stewards, approvers and auditors,
served by the hub under ``/console/`` (docs/console.md)."""

from qiao.console.views import install

__all__ = ["install"]
