"""The Django models of ``benchmarks/outbox.py``: one plain table, one watched."""
