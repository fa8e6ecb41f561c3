"""`python -m consumers.duration`: the dynamic-duration service, configured by environment only
(DURATION_*, KAFKA_*)."""

from consumers.serve import main

if __name__ == "__main__":
    main("duration")
