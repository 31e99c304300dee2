"""The lab around a run: its network namespace, scenarios and supervision."""
