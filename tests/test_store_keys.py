"""Store keys never move: a results store written by an earlier version keeps serving its finished runs.

The hashes below were computed on the code before the experiment layer's refactor (issue 21); a change that
moves any of them orphans every stored run of that kind. A new method or setting adds keys, it never
changes these. The last test recomputes real keys from the committed archives' own config.yaml files.
"""
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from mirror import DATA, needs_mirror

from ift.experiment.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BIND = ({"name": "t"}, {"source": "local", "splits": {"a": "0"}}, "D\n\n")
PINNED = [  # (overrides, provisional hash from parse_config, hash after bind(*BIND))
    ([],
     'c44b1f97a60a7eb4d7a6f6a9d0678a3cdfe09f6127b8b2d6ff165e4968812d73',
     '1a294f1c102597c8eb5ebf183b3c7592eb69c71a9b0eff802207351627251c70'),
    (['optim=paper'],
     'ab0e83d0dee168dccc331cd76493ab37bbe68e95a38bcedeb162165f08bdde47',
     '435c0db5e7352921b63a68f42706b57b55cd4681da32f641069b849ad55308a7'),
    (['optim=no_momentum'],
     '42c07db32af28516389a33804a1278f3dc89f51d8ec62948e26e966e210ebaf1',
     '498cf2e867ae83b9b2e7992ea44e9eb0a796e606dc22abea2c2f50bebd29847d'),
    (['method=zero_shot'],
     '2c294cf30993fd381dc5bdcee78e4ea53f88690636a99baea3d81d923c6d0612',
     '369c7e63a71bbc223f07913fc43d425be47b047a64c1c80f218a71943db9a15c'),
    (['method=repeat', '++method.max_repeats=4'],
     '98d0eff2f8c0f1223a51345c42434eda7d64890b0e2505c5317be2b0065b9959',
     '1b530a56e940edcc57f97a6f181f0ec98ce48c3dc44c2e2a99516cb2a501f052'),
    (['method=more_demos', '++method.max_factor=3'],
     'ca0eb9e1253cba583a3577b2d21ae98dd8111747325ed4807f5cb2731221d6a3',
     '5479fb6157e2b10cd471bc58f29d3c24daa8cdaa13ff192edb970ea1e38716f0'),
    (['method=grad', '++method.lr=0.01', 'optim.T=5'],
     '93519e2151d846de90ffc5f9fef11d1eb1eec07afe3c4ffe1c3ca98f314e0d3b',
     '8a4473712230c53ad01400d21aead0942ad662fa9cdad5fe9f5ebaac727782db'),
    (['optim.patience=2'],
     '118693ab2817f32c050503b82d2f64bb7ce10fb48811dbb846df5a08db07d421',
     'de79fd2916d4ff7188574d36d75fb4e7ea1c8f78c0a41a398e382c2c3191ea35'),
    (['method=grad', 'optim.patience=3'],
     '0af8380e65bc47e968419de785aeaf24854c8d38908b9824bc1b45e41d6abcec',
     'eea95ade283834615a9097fcbd14acba574da6c2ec95806d864fe8b8d4e5a977'),
    (['method=repeat', 'optim.patience=2'],
     '238ad373fc39ec06a9f1c23be051333447fa57a8d9ccd332ab35400e815ceb30',
     'e5c1bd9118fcc4bd3ea9f3dc8a1a65dfbbe20fe3232a83b711ea2c5c1329e769'),
    (['experiment=rq2_efficiency'],
     'bac184aaf3bdd3cb87f41b1281b70c1e25b8a513e0879ef1477dacb1b2aa7a1d',
     '571afb4148fbe587f191fc9c05a67ae1395a500f0f6cea77452308e9f5c747a6'),
    (['model=gpt2', 'quant=fp16'],
     '82e0069708902f0cf87e15292d4cd3fbac525d6c50212a65d2e3a4ab2c15f122',
     '48615f547cd5d04193d2de2c20db680f3c26f06c81355b203890e85377741218'),
    (['experiment=study_ift', 'task=sst2', 'seed=3', 'task.eval_limit=100', 'task.dev_size=30', 'quant=bf16_mixed', 'optim.eta=0.1', 'optim.T=8', 'optim.position_mode=aligned', 'logger=disabled'],
     'cb23be49ff00a958aa695d3dc147484c67c62f0e98138a13d38887097e62228b',
     '7f6a183137100787741b7fbcb04fde27d9cfa7dab42a08e33984ca200254ce0a'),
    (['experiment=study_baselines', 'method=zero_shot', 'optim.T=8', 'task=copa', 'n_shot=4', 'quant=bf16_mixed'],
     'fe4ac3c24e1d0a7d125b9bf3328b042c3f6117f5ac82c28edb9f8952bf5cfdaf',
     'a5d87ff0f57af158bf1a0f3f841190f31195dd6aa5e89d15f2b679489ca21c15'),
    (['experiment=study_momentum', 'optim.eta=0.1', 'optim.position_mode=aligned', 'optim.T=8', 'task=mr'],
     '549acf84b2ff17b739d8732cdc1b50e46d57f0c8337335cf0cd5fbcbf83dc219',
     '42bb82edcf99cd60b9ff2d723460aebc5abddc6afbb16a6778bb00ff6203e417'),
    (['task=agnews', 'task.demo_split=test', 'eval.batch_size=8', 'eval.save_predictions=true', 'device=cpu'],
     '46f1fda701e30e119266c324c3c7b81684ea1e92d3c6a3d5543328657878e2a6',
     '1a294f1c102597c8eb5ebf183b3c7592eb69c71a9b0eff802207351627251c70'),
]


@pytest.mark.parametrize("overrides, provisional, bound", PINNED, ids=[" ".join(p[0]) or "defaults" for p in PINNED])
def test_store_keys_of_composed_configs_are_pinned(overrides, provisional, bound):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    job = parse_config(cfg, base_dir="/base")
    assert job.hash == provisional
    assert job.bind(*BIND).hash == bound


def test_a_later_task_field_enters_the_key_only_when_set(tmp_path):
    """demo_max_chars came after runs were archived: unset it must leave the task's key as it was (no such
    entry), set it must give a new one."""
    from ift.experiment.keys import task_identity
    from ift.tasks import load_task

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "train.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    spec = {"name": "t", "template": "{text}:", "label_words": ["x", "y"], "data_dir": str(tmp_path),
            "eval_split": "train"}
    unset, capped = task_identity(load_task(spec)), task_identity(load_task({**spec, "demo_max_chars": 40}))
    assert "demo_max_chars" not in unset
    assert capped.pop("demo_max_chars") == 40 and capped == unset


@pytest.mark.slow
@needs_mirror("sst2")
def test_archived_runs_keep_their_keys():
    """One run of every (task, method, position mode) in the committed archives: prepare(config.yaml) gives
    the key the run was stored under."""
    from ift.experiment.job import prepare

    checked = set()
    for archive in sorted((ROOT / "docs" / "results").glob("*/runs.tar.gz")):
        with tarfile.open(archive) as tar:
            files = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in files if n.endswith("/config.yaml")):
                meta = json.load(tar.extractfile(files[name.replace("config.yaml", "meta.json")]))
                kind = (archive.parent.name, meta["task"], meta["method"], meta.get("position_mode"),
                        meta.get("patience"))
                if kind in checked:
                    continue
                checked.add(kind)
                cfg = yaml.safe_load(tar.extractfile(files[name]))
                cfg["task"]["data_dir"] = str(DATA)  # the mirror here; where data lives is not keyed
                cfg["device"] = "cpu"  # they ran on CPUs; on a GPU node device=auto keys a GPU run, a new key
                assert prepare(cfg, base_dir="/").job.hash == meta["config_hash"], name
    assert len(checked) >= 10
