"""``python -m cehrgpt.analysis.fidelity``: the fidelity report's command line."""

from cehrgpt.analysis.fidelity.job import main

raise SystemExit(main())
