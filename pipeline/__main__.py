"""`python -m distinit.pipeline` is the same as the `distinit` console script."""

from distinit.pipeline.cli import main

if __name__ == "__main__":
    main()
