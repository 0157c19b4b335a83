"""RQ2 helpers: the OOM search against fake models whose memory limit the test sets, and the study on a tiny model."""
import mmap
import time

import pytest
import torch

import ift
from ift.efficiency import find_max_batch, is_oom, measure


class FakeModel:
    """Runs out of memory above `capacity` (as CUDA would); records every batch it was asked to run."""

    def __init__(self, capacity, error=lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")):
        self.capacity, self.error, self.tried = capacity, error, []

    def __call__(self, batch):
        self.tried.append(batch)
        if batch > self.capacity:
            raise self.error()


@pytest.mark.slow
@pytest.mark.parametrize("capacity", [1, 2, 3, 7, 8, 100, 257, 1000, 1023, 1024, 4095])
def test_finds_the_known_limit(capacity):
    fake = FakeModel(capacity)
    assert find_max_batch(fake) == capacity
    # doubling then bisection: logarithmic number of tries, never far past the first failure
    assert len(fake.tried) <= 2 * capacity.bit_length() + 2
    assert max(fake.tried) <= 2 * capacity


def test_plain_runtime_error_mentioning_oom_counts():
    fake = FakeModel(37, error=lambda: RuntimeError("[enforce fail] DefaultCPUAllocator: out of memory"))
    assert find_max_batch(fake) == 37


@pytest.mark.slow
def test_limit_and_start():
    assert find_max_batch(FakeModel(10_000), limit=4096) == 4096
    assert find_max_batch(FakeModel(10_000), limit=1000) == 1000  # not a power of two: tried as the last step
    assert find_max_batch(FakeModel(600), limit=1000) == 600
    assert find_max_batch(FakeModel(50), start=16) == 50
    assert find_max_batch(FakeModel(5), start=16) == 5  # start already too big: bisect below it
    assert find_max_batch(FakeModel(0)) == 0  # nothing fits


def test_non_oom_error_propagates():
    def broken(batch):
        if batch > 4:
            raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        find_max_batch(broken)
    with pytest.raises(RuntimeError, match="device-side assert"):
        find_max_batch(FakeModel(3, error=lambda: RuntimeError("device-side assert triggered")))


def test_recovers_after_oom_and_frees_memory(monkeypatch):
    calls = []
    monkeypatch.setattr("ift.efficiency.gc.collect", lambda: calls.append("gc"))
    fake = FakeModel(5)
    assert find_max_batch(fake) == 5
    failures = sum(b > 5 for b in fake.tried)
    assert calls == ["gc"] * failures


def test_is_oom():
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("size mismatch"))
    assert not is_oom(MemoryError())  # host allocation failure is not something the search can back off from


def test_measure_throughput_and_cpu_peak_memory():
    def work():
        # 64 MiB of fresh pages, touched so they are resident (an anonymous map: malloc could hand back memory
        # that earlier tests freed but the process still holds, which is no RSS growth)
        block = mmap.mmap(-1, 64 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(0.05)
        return block

    m = measure(work, n_queries=10)
    assert 10 / 0.05 > m["queries_per_s"] > 0  # at least the 50 ms sleep
    assert m["queries_per_s"] == pytest.approx(10 / m["seconds"])
    assert m["peak_mem_mb"] >= 48  # sampled RSS growth sees most of the 64 MiB block


@pytest.mark.slow
def test_run_efficiency_study_on_tiny_model(tiny_lm, demos, examples):
    pytest.importorskip("ift.scorer")
    pytest.importorskip("ift.tuner")
    from ift.efficiency import run_efficiency_study
    from ift.tuner import ForwardTuner

    lm = tiny_lm("llama")
    prefix = list(ForwardTuner(lm, eta=0.01, beta=0.9).steps(demos, 2))[-1]
    rows = run_efficiency_study(lm, examples, demos, prefix, batch_sizes=(1, 4))
    assert [(r["method"], r["batch_size"]) for r in rows] == [("icl", 1), ("icl", 4), ("tuned", 1), ("tuned", 4)]
    for r in rows:
        assert set(r) == {"method", "device", "batch_size", "queries_per_s", "tokens_per_query", "peak_mem_mb",
                          "peak_total_mb", "max_batch", "capped"}
        assert r["device"] == "cpu" and r["max_batch"] is None and r["capped"] is None and r["queries_per_s"] > 0
        assert r["peak_total_mb"] is None
    icl, tuned = rows[0], rows[2]
    n_demo = len(lm.tokenizer(demos).input_ids)
    # the ICL input carries the demonstrations for every distinct query; the tuned input does not
    assert icl["tokens_per_query"] - tuned["tokens_per_query"] == pytest.approx(n_demo * 6 / 5, abs=1.5)


def _fake_memory(monkeypatch, capacity, fail_timing=None):
    """A scorer that runs out of memory above `capacity[method]` distinct queries per batch (as CUDA would);
    fail_timing(method, batch) -> True: that call runs out of memory too. Returns the calls it saw."""
    import ift.scorer

    real, seen = ift.scorer.score_examples, []

    def fake_score(lm, exs, prefix=None, demonstrations=None, batch_size=32, **kw):
        method = "tuned" if prefix is not None else "icl"
        seen.append((method, len(exs), batch_size, kw.get("share_queries", True)))
        if min(batch_size, len(exs)) > capacity[method] or (fail_timing and fail_timing(method, batch_size)):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(lm, exs, prefix=prefix, demonstrations=demonstrations, batch_size=batch_size, **kw)

    monkeypatch.setattr(ift.scorer, "score_examples", fake_score)
    return seen


def _prefix(lm, demos):
    from ift.tuner import ForwardTuner

    return list(ForwardTuner(lm, eta=0.01, beta=0.9).steps(demos, 2))[-1]


@pytest.mark.slow
def test_study_searches_the_max_batch_of_each_method(tiny_lm, demos, examples, monkeypatch):
    """The search path on CPU: a scorer whose memory need the test sets (ICL fits 2 queries, tuned 4)."""
    from ift.efficiency import run_efficiency_study

    seen = _fake_memory(monkeypatch, {"icl": 2, "tuned": 4})
    lm = tiny_lm("llama")
    rows = run_efficiency_study(lm, examples, demos, _prefix(lm, demos), search=True)
    assert [(r["method"], r["batch_size"], r["max_batch"], r["capped"]) for r in rows] == \
        [("icl", 2, 2, False), ("tuned", 4, 4, False)]
    assert all(not share for *_, share in seen)  # repeats are queries of their own


@pytest.mark.slow
def test_the_search_goes_past_the_examples_and_a_capped_result_says_so(tiny_lm, demos, examples, monkeypatch):
    """5 examples, room for 12 tuned queries: the search fills batches with repeats and finds 12; ICL fits
    anything up to the limit of 16, so its 16 is a lower bound, recorded as capped."""
    from ift.efficiency import run_efficiency_study

    seen = _fake_memory(monkeypatch, {"icl": 10**6, "tuned": 12})
    lm = tiny_lm("llama")
    rows = run_efficiency_study(lm, examples, demos, _prefix(lm, demos), search=True, limit=16)
    assert [(r["method"], r["max_batch"], r["capped"]) for r in rows] == [("icl", 16, True), ("tuned", 12, False)]
    assert ("tuned", 13, 13, False) in seen and len(examples) == 5
    # timed over max(examples, batch) queries at the batch found
    assert [r["batch_size"] for r in rows] == [16, 12]


@pytest.mark.slow
def test_out_of_memory_while_timing_steps_the_batch_down(tiny_lm, demos, examples, monkeypatch):
    """The search finds 8, but the warm-up at 8 and at 7 runs out of memory (fragmentation): the study
    measures at 6 and reports 6, not capped, instead of crashing."""
    from ift.efficiency import run_efficiency_study

    searched = set()

    def timing_fails(method, batch):
        if method != "tuned":
            return False
        if batch not in searched:  # the first call at each size is the search's
            searched.add(batch)
            return False
        return batch in (7, 8)

    _fake_memory(monkeypatch, {"icl": 3, "tuned": 8}, timing_fails)
    lm = tiny_lm("llama")
    rows = run_efficiency_study(lm, examples, demos, _prefix(lm, demos), search=True, limit=8)
    assert [(r["method"], r["batch_size"], r["max_batch"], r["capped"]) for r in rows] == \
        [("icl", 3, 3, False), ("tuned", 6, 6, False)]


def test_examples_are_searched_longest_first_in_tokens(tiny_lm):
    """Token counts, not characters, decide which queries fill a search batch."""
    from ift.efficiency import query_tokens

    lm = tiny_lm("llama")
    tok = lm.tokenizer
    few_long_words = ift.Example.shared("Sentiment Sentiment Sentiment", [" positive"])
    many_rare_chars = ift.Example.shared("qzxj vkwq", [" x"])
    assert len(many_rare_chars.contexts[0]) < len(few_long_words.contexts[0])
    assert query_tokens(tok, many_rare_chars) > query_tokens(tok, few_long_words)
    assert query_tokens(tok, few_long_words) == len(tok("Sentiment Sentiment Sentiment positive",
                                                        add_special_tokens=False).input_ids)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_real_cuda_oom_is_recovered():
    """Each batch unit needs 1 GiB next to a fixed ballast; the search must land just under the free memory."""
    gib = 2**30
    free, _ = torch.cuda.mem_get_info()

    def try_batch(b):
        x = torch.empty(b * gib, dtype=torch.uint8, device="cuda")
        del x

    found = find_max_batch(try_batch, limit=1024)
    assert 0 < found <= free // gib
    assert found >= free // gib - 2  # caching allocator slack: within 2 GiB of what was free
    assert torch.cuda.memory_allocated() == 0  # nothing left behind by the failed tries
    torch.empty(gib, device="cuda", dtype=torch.uint8)  # and the device still works


@cuda
def test_study_on_gpu(tiny_lm, demos, examples):
    from ift.efficiency import run_efficiency_study
    from ift.models import LoadedModel
    from ift.tuner import ForwardTuner

    lm = tiny_lm("llama")
    lm = LoadedModel(lm.model.to("cuda"), lm.tokenizer, lm.name, torch.device("cuda"))
    prefix = list(ForwardTuner(lm, eta=0.01, beta=0.9).steps(demos, 2))[-1]
    rows = run_efficiency_study(lm, examples, demos, prefix)
    assert [r["method"] for r in rows] == ["icl", "tuned"]
    # a tiny model fits any batch up to the limit: a lower bound, said so
    assert all(r["device"] == "cuda" and r["max_batch"] == 4096 == r["batch_size"] and r["capped"] for r in rows)
    assert all(0 < r["peak_mem_mb"] < r["peak_total_mb"] for r in rows)


def test_reports_print_a_capped_max_batch_as_a_lower_bound(tmp_path):
    """A capped search reads "≥ N" in Figure 3 and in the report's table, and gets no ICL-vs-tuned ratio."""
    import matplotlib.pyplot as plt
    from test_analysis import write_job

    from analysis import figures, load, report

    def row(method, batch, capped):
        return {"method": method, "device": "cuda", "batch_size": batch, "queries_per_s": 10.0 * batch,
                "tokens_per_query": 10.0, "peak_mem_mb": 100.0, "peak_total_mb": 900.0, "max_batch": batch,
                "capped": capped}

    write_job(tmp_path / "s" / "a", acc=[.5], mode="efficiency", task="sst5",
              efficiency=[row("icl", 512, False), row("tuned", 4096, True)])
    runs = load.used(load.load([tmp_path / "s"]))
    fig = figures.efficiency_figure(figures.efficiency_frame(runs))
    labels = [t.get_text() for t in fig.get_axes()[0].texts]
    assert labels == ["≥ 4096"]  # no "+700%" for a bound
    plt.close(fig)
    text = report.build(runs, tmp_path / "out", sources=[tmp_path / "s"]).read_text()
    assert "≥ 4096" in text and "| 512 |" in text
