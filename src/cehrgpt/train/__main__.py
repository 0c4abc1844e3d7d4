"""Entry point of ``python -m cehrgpt.train`` (the command line lives in :mod:`cehrgpt.train.cli`)."""

from cehrgpt.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
