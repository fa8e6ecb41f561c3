"""`python -m consumers.tip`: the tip service, configured by environment only (TIP_*, KAFKA_*)."""

from consumers.serve import main

if __name__ == "__main__":
    main("tip")
