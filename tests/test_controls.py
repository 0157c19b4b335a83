"""Issue 42's controls: the random direction keeps IFT's per-layer update sizes but not its direction, the
demonstration draws stay off dev and evaluation rows, contextual calibration computes Zhao et al.'s correction,
repetition runs the copies that fit a small window, and each control runs as a job beside IFT."""
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mirror import needs_mirror

import ift
from ift.controls import (
    CalibratedScores,
    RandomDirectionTuner,
    calibrate,
    content_free_examples,
    demonstration_draws,
)
from ift.experiment import run_job
from ift.experiment.controls import DevDemos
from ift.experiment.job import prepare
from ift.scorer import ExampleScore
from ift.tasks import load_task
from jobs import Killed, kill_at
from jobs import job_cfg as cfg
from jobs import step_rows as rows
from tiny import make_tokenizer, save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
needs_obqa = needs_mirror("obqa")



def meta(result) -> dict:
    return json.loads((Path(result["store"]) / "meta.json").read_text())


# --- random direction ---------------------------------------------------------------------------------

def test_random_direction_moves_by_ifts_per_layer_sizes_in_another_direction(tiny_lm, demos, examples):
    lm = tiny_lm("llama")
    ift_steps = list(ift.ForwardTuner(lm, eta=0.1, beta=0.9).steps(demos, 4))
    rnd = list(RandomDirectionTuner(lm, eta=0.1, beta=0.9, seed=7).steps(demos, 4))
    assert [p.step for p in rnd] == [1, 2, 3, 4]
    for a, b in zip(rnd[0].keys + rnd[0].values, ift_steps[0].keys + ift_steps[0].values):
        assert torch.equal(a, b)  # step 1 is IFT's step 1, the ICL cache
    icl = ift.score_examples(lm, examples, demonstrations=demos)
    for ours, theirs in zip(ift.score_examples(lm, examples, prefix=rnd[0]), icl):
        assert ours.sum_logprobs == pytest.approx(theirs.sum_logprobs, abs=1e-4)
    for t in range(1, 4):
        for name in ("keys", "values"):
            for layer in range(2):
                ours = getattr(rnd[t], name)[layer] - getattr(rnd[t - 1], name)[layer]
                theirs = getattr(ift_steps[t], name)[layer] - getattr(ift_steps[t - 1], name)[layer]
                assert torch.linalg.vector_norm(ours).item() == pytest.approx(
                    torch.linalg.vector_norm(theirs).item(), rel=1e-4)
                if name == "values" and layer == 0:  # layer 0's values ignore context: IFT does not move them
                    assert theirs.abs().max() == 0 and ours.abs().max() == 0
                    continue
                cos = torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0).item()
                assert abs(cos) < 0.5, (t, name, layer, cos)
        assert rnd[t].grad_norms_k == pytest.approx(
            [torch.linalg.vector_norm(a - b).item() for a, b in zip(ift_steps[t].keys, ift_steps[t - 1].keys)])


def test_random_direction_same_seed_same_cache_other_seed_other_cache(tiny_lm, demos):
    lm = tiny_lm("llama")
    a, b, c = (list(RandomDirectionTuner(lm, eta=0.1, seed=s).steps(demos, 3))[-1] for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.keys, b.keys))
    assert not torch.equal(a.keys[0], c.keys[0])
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        RandomDirectionTuner(lm, seed=-1)


def test_fixed_direction_keeps_ifts_distance_from_icl_along_one_line_per_layer(tiny_lm, demos):
    lm = tiny_lm("llama")
    ift_steps = list(ift.ForwardTuner(lm, eta=0.1, beta=0.9).steps(demos, 4))
    fixed = list(RandomDirectionTuner(lm, eta=0.1, beta=0.9, seed=7, direction="fixed").steps(demos, 4))
    assert all(torch.equal(a, b) for a, b in zip(fixed[0].keys, ift_steps[0].keys))  # step 1: ICL
    for name in ("keys", "values"):
        for layer in range(2):
            icl = getattr(fixed[0], name)[layer]
            moves = [getattr(p, name)[layer] - icl for p in fixed[1:]]
            ifts = [getattr(p, name)[layer] - getattr(ift_steps[0], name)[layer] for p in ift_steps[1:]]
            for ours, theirs in zip(moves, ifts):  # as far from ICL as IFT at every step
                assert torch.linalg.vector_norm(ours).item() == pytest.approx(
                    torch.linalg.vector_norm(theirs).item(), rel=1e-4, abs=1e-7)
            if name == "values" and layer == 0:  # layer 0's values ignore context: neither moves
                assert all(m.abs().max() == 0 for m in moves)
                continue
            for ours in moves[1:]:  # one line: every step's displacement points the same way as step 2's
                cos = torch.nn.functional.cosine_similarity(ours.flatten(), moves[0].flatten(), dim=0).item()
                assert cos == pytest.approx(1.0, abs=1e-5)
            cos = torch.nn.functional.cosine_similarity(moves[-1].flatten(), ifts[-1].flatten(), dim=0).item()
            assert abs(cos) < 0.5, (name, layer, cos)  # but not IFT's way
    far = [torch.linalg.vector_norm(a - b).item() for a, b in zip(fixed[3].keys, fixed[2].keys)]
    assert fixed[3].grad_norms_k == pytest.approx(far)  # the step row records this cache's own move
    with pytest.raises(ValueError, match="direction must be one of fresh, fixed, got 'straight'"):
        RandomDirectionTuner(lm, direction="straight")


# --- demonstrations chosen on dev ---------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"demo_split": "test", "eval_limit": 20}])
def test_demonstration_draws_start_with_the_jobs_own_and_never_touch_dev_or_evaluated_rows(overrides):
    task = load_task("demo", **overrides)
    draws = demonstration_draws(task, 2, 3, 6)
    assert draws[0] == task.demonstrations(2, 3)
    assert len({tuple(sorted(d.indices)) for d in draws}) > 3  # other rows, not one draw six times
    dev = {ex.index for ex in task.dev_examples(seed=3)}
    evaluated = set(task.eval_indices(3)) if overrides else set()
    for d in draws:
        assert len(d.indices) == 4 and not set(d.indices) & (dev | evaluated)
        labels = [task.example("demo_split", i).gold for i in d.indices]
        assert sorted(labels) == [0, 0, 1, 1]  # stratified: 2 per class in every draw
    with pytest.raises(ValueError, match="k \\(number of draws\\) must be an integer >= 1"):
        demonstration_draws(task, 2, 3, 0)


# --- contextual calibration ---------------------------------------------------------------------------

def test_calibration_divides_by_the_content_free_label_probabilities():
    free = [ExampleScore([math.log(0.8), math.log(0.2)], [0.0, 0.0], [1, 1], -1),
            ExampleScore([math.log(0.6), math.log(0.4)], [0.0, 0.0], [1, 1], -1)]
    cal = CalibratedScores(free)
    assert cal.p_cf.tolist() == pytest.approx([0.7, 0.3])
    query = ExampleScore([math.log(0.6) - 5, math.log(0.4) - 5], [-1.0, -2.0], [1, 1], 1)  # unnormalised
    (out,) = cal([query])
    q = [0.6 / 0.7, 0.4 / 0.3]
    assert out.sum_logprobs == pytest.approx([math.log(x / sum(q)) for x in q])
    assert (query.pred, out.pred, out.gold) == (0, 1, 1)  # the label bias toward word 0 is corrected
    with pytest.raises(ValueError, match="3 candidates but the calibration has 2 label words"):
        cal([ExampleScore([0.0] * 3, [0.0] * 3, [1] * 3, 0)])


@pytest.mark.slow
def test_calibration_of_a_prefix_reads_the_three_content_free_queries(tiny_lm, demos):
    lm, task = tiny_lm("llama"), load_task("demo")
    free = content_free_examples(task)
    assert [e.contexts[0] for e in free] == ["Sentence: N/A\nTopic:", "Sentence: \nTopic:", "Sentence: [MASK]\nTopic:"]
    assert free[0].continuations == (" food", " weather")
    prefix = ift.icl_prefix(lm, demos)
    by_hand = []
    for text in ("N/A", "", "[MASK]"):
        (s,) = ift.score_examples(lm, [ift.Example.shared(f"Sentence: {text}\nTopic:", [" food", " weather"])],
                                  demonstrations=demos)
        z = [math.exp(x) for x in s.sum_logprobs]
        by_hand.append([x / sum(z) for x in z])
    assert calibrate(lm, task, prefix).p_cf.tolist() == pytest.approx([sum(c) / 3 for c in zip(*by_hand)], rel=1e-4)


@needs_obqa
def test_calibration_refuses_multiple_choice_clearly():
    task = load_task("obqa")
    with pytest.raises(ValueError, match="fixed label_words.*obqa is multiple choice"):
        content_free_examples(task)


# --- each control as a job ----------------------------------------------------------------------------

@pytest.mark.slow
def test_each_control_runs_as_a_job_beside_ift_on_the_same_rows(tiny_dir, tmp_path):
    runs = {m: run_job(cfg(tiny_dir, tmp_path, f"method={m}", "optim.T=3", *extra))
            for m, extra in (("ift", ()), ("random_direction", ()), ("fixed_direction", ()),
                             ("dev_demos", ("method.draws=3",)), ("calibrate", ()))}
    assert {m: r["status"] for m, r in runs.items()} == dict.fromkeys(runs, "finished")
    first = {m: rows(r)[0] for m, r in runs.items()}
    for m in runs:  # step 1 is the job's own ICL for every control
        assert (first[m]["acc"], first[m]["dev_acc"]) == (first["ift"]["acc"], first["ift"]["dev_acc"]), m
        assert meta(runs[m])["demonstrations"] == meta(runs["ift"])["demonstrations"]
    assert [len(rows(runs[m])) for m in runs] == [3, 3, 3, 3, 2]
    assert len({r["store"] for r in runs.values()}) == 5  # each direction control is keyed apart from IFT
    rd = rows(runs["random_direction"])
    assert rd[0]["update_norm_k"] == [0.0, 0.0] and rd[2]["update_norm_v"][1] > 0
    assert meta(runs["random_direction"])["eta"] == meta(runs["ift"])["eta"]
    assert meta(runs["fixed_direction"])["method"] == "fixed_direction"
    draws = [r["demo_indices"] for r in rows(runs["dev_demos"])]
    assert draws[0] == meta(runs["ift"])["demonstrations"]["indices"] and draws[1] != draws[0]
    cal = rows(runs["calibrate"])[1]
    assert sum(cal["p_content_free"]) == pytest.approx(1.0) and cal["prefix_tokens"] == first["ift"]["prefix_tokens"]


@needs_obqa
def test_calibrate_on_multiple_choice_fails_before_the_store(tiny_dir, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        c = compose("config", overrides=["model=hf", f"model.source={tiny_dir}", "task=obqa", "method=calibrate",
                                         "logger=disabled", f"results_dir={tmp_path / 'r'}"])
    with pytest.raises(ValueError, match="method=calibrate: contextual calibration needs a classification task"):
        run_job(c)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_repetition_runs_the_copies_that_fit_a_small_window_and_records_the_cap(tmp_path):
    ready = prepare(cfg("unused", tmp_path, "method=repeat"))
    t = make_tokenizer()  # the tokenizer the saved tiny model carries
    longest = max(len(t(ex.contexts[0] + ex.continuations[0]).input_ids) for ex in ready.examples + ready.dev)
    two = len(t(ift.repeat_demonstrations(ready.demos.text, 2)).input_ids)
    model = save_tiny_model(tmp_path / "small", "llama", max_position_embeddings=two + longest + 2)
    result = run_job(cfg(model, tmp_path / "r", "method=repeat", "method.max_repeats=4"))
    assert result["status"] == "finished"
    assert [r["step"] for r in rows(result)] == [1, 2]
    m = meta(result)
    assert (m["T"], m["max_repeats"], m["window_cap"]["fit"], m["window_cap"]["asked"]) == (2, 4, 2, 4)
    assert "too long for this model" in m["window_cap"]["why"]
    from analysis.load import load

    assert [r.skip for r in load([tmp_path / "r"])] == [None]  # the capped run counts, with its two steps


def test_a_demonstration_draw_too_long_for_the_model_fails_before_any_scoring(tmp_path, monkeypatch):
    ready = prepare(cfg("unused", tmp_path, "method=dev_demos", "method.draws=4"))
    t = make_tokenizer()
    longest = max(len(t(ex.contexts[0] + ex.continuations[0]).input_ids) for ex in ready.examples + ready.dev)
    own = len(t(ready.demos.text).input_ids)
    model = save_tiny_model(tmp_path / "small", "llama", max_position_embeddings=own + longest + 1)
    seen = []
    with pytest.raises(ValueError, match="too long for this model"):  # the longest draw in characters, up front
        run_job(cfg(model, tmp_path / "r", "method=dev_demos", "method.draws=4"), on_step=seen.append)
    assert seen == []
    # a draw longer in tokens than the longest in characters is caught before any draw is scored
    monkeypatch.setattr(DevDemos, "longest_demo_text", lambda self, job, task, demos: demos.text)
    with pytest.raises(ValueError, match=r"method=dev_demos: draw \d of 4 does not fit this model"):
        run_job(cfg(model, tmp_path / "r", "method=dev_demos", "method.draws=4"), on_step=seen.append)
    assert seen == []


@pytest.mark.slow
def test_a_killed_random_direction_run_starts_again_and_gives_the_same_steps(tiny_dir, tmp_path, caplog):
    args = ("method=random_direction", "optim.T=3", "optim.eta=0.5")
    with pytest.raises(Killed):
        run_job(cfg(tiny_dir, tmp_path / "a", *args), on_step=kill_at(2))
    again = run_job(cfg(tiny_dir, tmp_path / "a", *args))
    whole = run_job(cfg(tiny_dir, tmp_path / "b", *args))
    assert "keeps no checkpoint; redoing recorded step(s) 1-2" in caplog.text
    keep = ("step", "acc", "dev_acc", "update_norm_k", "update_norm_v")
    assert [{k: r[k] for k in keep} for r in rows(again)] == [{k: r[k] for k in keep} for r in rows(whole)]
