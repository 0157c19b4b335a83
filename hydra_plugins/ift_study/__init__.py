"""ift's Hydra plugins: the study sweeper."""
