"""`python -m probes`: the probe process (see probes/process.py)."""

from probes.process import main

raise SystemExit(main())
