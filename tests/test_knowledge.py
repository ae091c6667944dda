"""The toy world's concept geometry (resurgence.toyworld.knowledge) and its calibration statistic."""

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from resurgence.config import ConfigError
from resurgence.toyworld.clip import domain_pair_weights, knowledge_gram_loss
from resurgence.toyworld.concepts import toy_world
from resurgence.toyworld.geometry import (
    calibration_statistics,
    concept_groups,
    gram_similarity,
    knowledge_gram,
    knowledge_vectors,
    min_cosine_statistics,
)
from resurgence.toyworld.knowledge import CATEGORY_OF, PAPER_MIN_COSINE, KnowledgeConfig


@pytest.fixture(scope="module")
def world():
    return toy_world(0)


def test_no_shared_structure_gives_the_independent_vectors_of_before(world):
    v = knowledge_vectors(world, KnowledgeConfig(shared=0.0))
    # the text encoder's knowledge before calibration: seed world + 3, float64 normal, normalised
    old = torch.randn(
        len(world.identities), 384, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    old = (old / old.norm(dim=1, keepdim=True)).float()
    assert torch.equal(v["identity"], old)
    assert v["object"].shape == (len(world.objects), 384)


def test_pairwise_cosines_follow_the_shared_share(world):
    """cos(k_i, k_j) ~ s ((1 - tau) + tau cos(g_i, g_j)) with g the normalised sum of (near-orthogonal) labels."""
    s, tau = 0.6, 0.3
    v = knowledge_vectors(world, KnowledgeConfig(shared=s, spread=0.0, trait_share=tau))
    groups = concept_groups(world)
    for domain in ("identity", "object"):
        k, labels = v[domain], groups[domain]
        assert torch.allclose(k.norm(dim=1), torch.ones(len(k)), atol=1e-5)
        got, want = [], []
        for i in range(0, len(k), 7):
            for j in range(i + 1, len(k), 5):
                shared_labels = len(set(labels[i]) & set(labels[j]))
                c = shared_labels / math.sqrt(len(labels[i]) * len(labels[j]))
                want.append(s * ((1 - tau) + tau * c))
                got.append(float(k[i] @ k[j]))
        err = torch.tensor(got) - torch.tensor(want)
        assert err.abs().mean() < 0.03, (domain, err.abs().mean())
    # the knob orders the geometry: more sharing, higher mean cosine
    means = []
    for shared in (0.0, 0.4, 0.8):
        _, gram = knowledge_gram(world, KnowledgeConfig(shared=shared))
        n = len(world.identities)
        off = ~torch.eye(n, dtype=torch.bool)
        means.append(float(gram[:n, :n][off].mean()))
    assert means[0] == pytest.approx(0.0, abs=0.01) and means[0] < means[1] < means[2]


def test_every_object_of_the_world_has_a_category(world):
    assert {c.name for c in world.objects} <= set(CATEGORY_OF)


def test_min_cosine_statistics_match_a_direct_loop():
    names = ["a", "b", "c", "d", "e"]
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    gram = x @ x.T
    st = min_cosine_statistics(gram_similarity(names, gram), names, ["b", "d"])
    scores = [min(float(gram[i, 1]), float(gram[i, 3])) for i in (0, 2, 4)]  # erased b, d left out
    assert st["min"] == pytest.approx(min(scores), abs=1e-6)
    assert st["max"] == pytest.approx(max(scores), abs=1e-6)
    assert st["n_candidates"] == 3 and st["n_erased"] == 2


def test_calibration_statistics_say_whether_the_range_is_the_papers(world):
    erase = {"identity": [c.name for c in world.identities[:10]], "object": ["automobile", "ship"]}
    for shared, inside in ((0.0, False), (0.845, True)):
        names, gram = knowledge_gram(world, KnowledgeConfig(shared=shared))
        st = calibration_statistics(gram_similarity(names, gram), world, erase)
        assert st["identity"]["n_candidates"] == len(world.identities) - 10
        assert st["object"]["n_candidates"] == 35  # App. C.2: the CIFAR-100 objects
        assert st["object"]["paper_range"] == list(PAPER_MIN_COSINE["object"])
        for domain in ("identity", "object"):
            lo, hi = PAPER_MIN_COSINE[domain]
            assert st[domain]["inside_paper_range"] == (lo <= st[domain]["min"] and st[domain]["max"] <= hi)
        assert st["identity"]["inside_paper_range"] is inside


def test_knowledge_config_names_the_bad_key():
    with pytest.raises(ValueError, match="unknown toyworld knowledge keys \\['share'\\]"):
        KnowledgeConfig.from_dict({"share": 0.5})
    with pytest.raises(ValueError, match="shared must lie in"):
        KnowledgeConfig(shared=1.2)
    with pytest.raises(ValueError, match="shared \\* \\(1 \\+ spread\\)"):
        KnowledgeConfig(shared=0.98, spread=0.05)


def test_knowledge_gram_loss_matches_a_direct_loop():
    g = torch.Generator().manual_seed(1)
    e = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    target = torch.rand(4, 4, generator=g)
    terms = [(float(e[i] @ e[j]) - float(target[i, j])) ** 2 for i in range(4) for j in range(4) if i != j]
    assert knowledge_gram_loss(e, target).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    with pytest.raises(ValueError, match="expected \\(4, 4\\)"):
        knowledge_gram_loss(e, target[:3, :3])


def test_the_shipped_world_learned_the_configured_geometry_and_records_its_statistics():
    from resurgence import study
    from resurgence.config import load_config

    config = load_config(["config.yaml"])
    manifest = json.loads(Path("resources/toyworld/manifest.json").read_text())
    want = study.toy_knowledge(config)
    assert manifest["models"]["t2i"]["config"]["knowledge"] == want
    assert manifest["models"]["clip"]["config"]["knowledge"] == want
    geometry = manifest["geometry"]
    assert geometry["knowledge"] == want
    assert geometry["erase_sets"] == study.calibration_sets(config)
    for which in ("target", "clip", "t2i_text_states"):
        assert set(geometry[which]) == {"identity", "object"}
    assert (
        geometry["target"]["identity"]["inside_paper_range"]
        and geometry["target"]["object"]["inside_paper_range"]
    )


def test_shipped_models_of_another_geometry_stop_the_study_naming_the_key(tmp_path):
    from resurgence import study
    from resurgence.config import load_config

    config = load_config(["config.yaml"])
    config["toyworld"]["knowledge"] = {"shared": 0.5}
    with pytest.raises(ConfigError, match="'toyworld.knowledge'.*learned"):
        study.check_toy_knowledge(config)
    config["toyworld"]["knowledge"] = {"shared": 0.5, "bogus": 1}
    with pytest.raises(ConfigError, match="toyworld.knowledge.*bogus"):
        study.check_toy_knowledge(config)
    config["toyworld"]["knowledge"] = {"shared": 0.5}
    config["toyworld"]["retrain"] = True  # retrained models will learn it: nothing to check
    study.check_toy_knowledge(config)


def test_domain_balanced_gram_loss_weighs_each_pair_of_domains_alike():
    g = torch.Generator().manual_seed(2)
    e = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=1)
    target = torch.rand(5, 5, generator=g)
    groups = torch.tensor([0, 0, 0, 1, 1])
    blocks: dict[tuple[int, int], list[float]] = {}
    for i in range(5):
        for j in range(5):
            if i != j:
                key = tuple(sorted((int(groups[i]), int(groups[j]))))
                blocks.setdefault(key, []).append((float(e[i] @ e[j]) - float(target[i, j])) ** 2)
    expected = sum(sum(v) / len(v) for v in blocks.values()) / len(blocks)
    assert sorted(blocks) == [(0, 0), (0, 1), (1, 1)]
    assert knowledge_gram_loss(e, target, domain_pair_weights(groups)).item() == pytest.approx(
        expected, rel=1e-5
    )
    # one domain: the plain mean over pairs
    one = domain_pair_weights(torch.zeros(5, dtype=torch.long))
    assert knowledge_gram_loss(e, target, one).item() == pytest.approx(
        knowledge_gram_loss(e, target).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="expected \\(5, 5\\)"):
        knowledge_gram_loss(e, target, domain_pair_weights(groups[:4]))


def test_clip_knowledge_balance_names_its_allowed_values():
    from resurgence.toyworld.clip import ToyClipTrainConfig

    assert ToyClipTrainConfig().knowledge_balance == "pairs"  # the shipped CLIP's training
    with pytest.raises(ValueError, match="knowledge_balance: allowed values: \\['pairs', 'domains'\\]"):
        ToyClipTrainConfig(knowledge_balance="objects")


def test_calibrating_a_trained_clips_text_re_enters_it_in_the_manifest(tmp_path):
    """`calibrate_clip_text` on a trained world: the CLIP's entry gets the calibration in its config and
    metrics, keeps its training's provenance, and the manifest's digests match the rewritten files."""
    from resurgence.toyworld.clip import TextCalibrationConfig
    from resurgence.toyworld.train import calibrate_clip_text, train_all, verify_manifest

    train_all(tmp_path, profile="smoke", only=["clip"], device="cpu")
    before = json.loads((tmp_path / "manifest.json").read_text())["models"]["clip"]
    tc = TextCalibrationConfig(steps=2, warmup=1)
    metrics = calibrate_clip_text(tmp_path, tc, device="cpu")
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"]["clip"]
    assert entry["config"]["text_calibration"] == asdict(tc)
    assert entry["metrics"]["text_calibration"] == metrics["text_calibration"]
    assert entry["metrics"]["trained"]["device"] == before["device"] == "cpu"
    assert entry["metrics"]["trained"]["profile"] == "smoke"
    assert entry["metrics"]["final_loss"] == before["metrics"]["final_loss"]  # the training's, kept
    assert verify_manifest(tmp_path) == []
    with pytest.raises(ValueError, match="other settings than this code's defaults: \\['steps'\\]"):
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        manifest["models"]["clip"]["config"]["steps"] += 1
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        calibrate_clip_text(tmp_path, tc, device="cpu")
