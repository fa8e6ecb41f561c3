"""`python -m consumers.cost`: the cost service, configured by environment only (COST_*, KAFKA_*)."""

from consumers.serve import main

if __name__ == "__main__":
    main("cost")
