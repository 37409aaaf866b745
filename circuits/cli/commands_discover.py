"""``circuits discover`` and ``circuits evaluate-circuit``: the library's jobs, as commands."""
from __future__ import annotations

from circuits.cli.app import app
from circuits.cli.jobs import job_command
from circuits.jobs.discover import DISCOVER
from circuits.jobs.evaluate_circuit import EVALUATE_CIRCUIT

job_command(app, DISCOVER)
job_command(app, EVALUATE_CIRCUIT)
