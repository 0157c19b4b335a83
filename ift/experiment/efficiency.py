"""mode=efficiency (RQ2): ICL against the tuned prefix, per query, measured by the engine's ift/efficiency.py."""
from __future__ import annotations

import logging

import ift
from ift.efficiency import run_efficiency_study
from ift.experiment.schema import JobConfig
from ift.experiment.store import JobStore
from ift.experiment.tracking import Tracker

log = logging.getLogger(__name__)


def run_efficiency(job: JobConfig, lm, demo_text, examples, store: JobStore, tracker: Tracker):
    """Tune the prefix (any step's has the same shape, so the same cost), then measure ICL and the tuned prefix
    per query (ift.efficiency); returns (status, summary, error) as the step loop does."""
    store.reset()
    prefix = None
    for prefix in ift.ForwardTuner(lm, eta=job.optim.eta, beta=job.optim.beta,
                                   position_mode=job.optim.position_mode).steps(demo_text, job.optim.T):
        pass  # any step's prefix has the same shape, so the same cost; use the tuned one
    eff = job.efficiency
    rows = run_efficiency_study(lm, examples, demo_text, prefix, batch_sizes=eff["batch_sizes"], device=lm.device,
                                limit=eff["max_batch_limit"], search=eff["search"])
    for row in rows:
        store.append_efficiency(row)
        tracker.log_row(row)
        log.info("%s", row)
    by = {r["method"]: r for r in rows}
    summary = {"icl_queries_per_s": by["icl"]["queries_per_s"], "tuned_queries_per_s": by["tuned"]["queries_per_s"],
               "icl_max_batch": by["icl"]["max_batch"], "tuned_max_batch": by["tuned"]["max_batch"],
               "icl_capped": by["icl"]["capped"], "tuned_capped": by["tuned"]["capped"]}  # true: max_batch is a bound
    return "finished", summary, None
