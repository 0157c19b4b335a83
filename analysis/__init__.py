"""Tables and figures of the paper from recorded runs: `python -m analysis.report <sources>`."""
