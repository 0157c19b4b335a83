"""RQ2 helpers: the OOM search against fake models whose memory limit the test sets, and the study on a tiny model."""
import time

import pytest
import torch

from ift.efficiency import find_max_batch, is_oom, measure


class FakeModel:
    """Runs out of memory above `capacity` (as CUDA would); records every batch it was asked to run."""

    def __init__(self, capacity, error=lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")):
        self.capacity, self.error, self.tried = capacity, error, []

    def __call__(self, batch):
        self.tried.append(batch)
        if batch > self.capacity:
            raise self.error()


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
        block = bytearray(64 * 2**20)  # 64 MiB, touched so it is resident
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
                          "max_batch"}
        assert r["device"] == "cpu" and r["max_batch"] is None and r["queries_per_s"] > 0
    icl, tuned = rows[0], rows[2]
    n_demo = len(lm.tokenizer(demos).input_ids)
    # the ICL input carries the demonstrations for every distinct query; the tuned input does not
    assert icl["tokens_per_query"] - tuned["tokens_per_query"] == pytest.approx(n_demo * 6 / 5, abs=1.5)


@pytest.mark.slow
def test_study_searches_the_max_batch_of_each_method(tiny_lm, demos, examples, monkeypatch):
    """The search path on CPU: a scorer whose memory need the test sets (ICL fits 2 queries, tuned 4)."""
    pytest.importorskip("ift.scorer")
    import ift.scorer
    from ift.efficiency import run_efficiency_study
    from ift.tuner import ForwardTuner

    real = ift.scorer.score_examples
    capacity = {"icl": 2, "tuned": 4}
    seen = []

    def fake_score(lm, exs, prefix=None, demonstrations=None, batch_size=32, **kw):
        method = "tuned" if prefix is not None else "icl"
        seen.append((method, len(exs), batch_size))
        if min(batch_size, len(exs)) > capacity[method]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(lm, exs, prefix=prefix, demonstrations=demonstrations, batch_size=batch_size, **kw)

    monkeypatch.setattr(ift.scorer, "score_examples", fake_score)
    lm = tiny_lm("llama")
    prefix = list(ForwardTuner(lm, eta=0.01, beta=0.9).steps(demos, 2))[-1]
    rows = run_efficiency_study(lm, examples, demos, prefix, search=True)
    assert [(r["method"], r["batch_size"], r["max_batch"]) for r in rows] == [("icl", 2, 2), ("tuned", 4, 4)]
    assert ("tuned", 5, 5) in seen  # searched up to the number of examples, no further
    assert all(n <= len(examples) for _, n, _ in seen)


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
    assert all(r["device"] == "cuda" and r["max_batch"] == len(examples) == r["batch_size"] for r in rows)
    assert all(r["peak_mem_mb"] > 0 for r in rows)
