"""Run ift experiments: python launch.py [-m] key=value ...

    python launch.py                                             # default: bundled model, demo task, offline
    python launch.py -m model=opt task=trec optim.eta=0.1,0.01,0.001
    python launch.py -m experiment=rq3_steps_eta hydra/launcher=slurm hydra.launcher.partition=gpu

Configs live in conf/ (see docs/experiments.md); each job's results go to the results store
(results/ by default), which `python -m analysis.report results/` turns into the paper's tables and figures.
"""
import hydra

from ift.experiment.hydra_app import run_hydra_job


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> dict:
    return run_hydra_job(cfg)


if __name__ == "__main__":
    main()
