"""Reports: one self-contained HTML page (no server, no network) of head maps, ablations, needle runs and
reader answers, to look at rather than read. `report([...], "report.html")` writes it."""

from headwise.reports.page import report

__all__ = ["report"]
