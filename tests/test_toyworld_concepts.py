"""The toy world's catalogue: sizes, uniqueness, synonyms, similarity structure, prompts, captions."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest

from resurgence.toyworld.concepts import (
    CIFAR10,
    MAPPING_PHRASES,
    CaptionMix,
    ToyWorld,
    identity_distance,
    toy_world,
)
from resurgence.toyworld.render import TRAIT_KEYS, TRAIT_VALUES
from resurgence.world import IDENTITY_TEMPLATES

APP_C_OBJECTS = [
    "trout",
    "ray",
    "bee",
    "rose",
    "lobster",
    "oak tree",
    "aquarium fish",
    "tulip",
    "plain",
    "bowl",
    "pine tree",
    "mountain",
    "house",
    "crab",
    "willow tree",
    "motorcycle",
    "mushroom",
    "streetcar",
    "maple tree",
    "seal",
    "orange",
    "cup",
    "flatfish",
    "sunflower",
    "shark",
    "hamster",
    "tiger",
    "tank",
    "turtle",
    "cloud",
    "orchid",
    "road",
    "elephant",
    "rocket",
    "raccoon",
]


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return toy_world(0)


def test_sizes_and_exact_object_names(world: ToyWorld) -> None:
    assert len(world.identities) >= 130
    assert len(world.objects) >= 40
    names = [c.name for c in world.objects]
    assert names[:10] == list(CIFAR10) == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    assert set(APP_C_OBJECTS) <= set(names)
    assert world.concept("aeroplane").name == world.concept("plane").name == "airplane"
    assert world.concept("car").name == "automobile"
    assert world.concept("boat").name == "ship"
    assert world.concept("lorry").name == "truck"


def test_names_unique_and_every_object_has_a_synonym(world: ToyWorld) -> None:
    every = [n.lower() for c in (*world.identities, *world.objects) for n in c.names]
    assert len(every) == len(set(every))
    assert all(c.synonyms for c in world.objects)
    for c in world.identities:
        first, last = c.name.split(" ")
        assert first.istitle() and last.istitle()
    # one surname, one person: a name token never points at two identities
    assert len({c.name.split()[1] for c in world.identities}) == len(world.identities)
    # made up, not the paper's real celebrities
    assert not {"Jennifer Aniston", "Kate Upton", "Amy Winehouse"} & {c.name for c in world.identities}


def test_identities_are_distinct_trait_combinations(world: ToyWorld) -> None:
    combos = [c.traits for c in world.identities]
    assert len(set(combos)) == len(combos)
    for c in world.identities:
        t = dict(c.traits)
        assert tuple(t) == TRAIT_KEYS
        assert all(t[k] in TRAIT_VALUES[k] for k in TRAIT_KEYS)
        if t["gender"] == "female":
            assert t["facial_hair"] == "none" and t["hair_style"] not in ("bald", "spiky")
        assert c.trait("gender") == t["gender"]
    with pytest.raises(KeyError):
        world.identities[0].trait("height")


def test_near_and_far_pairs_exist(world: ToyWorld) -> None:
    dists = Counter(identity_distance(a, b) for a, b in itertools.combinations(world.identities, 2))
    assert dists[0] == 0
    assert dists[1] >= 20  # near-alike twins
    assert sum(v for d, v in dists.items() if d >= 7) >= 100  # far-apart pairs
    for a, b in world.near_pairs:
        assert world.identity_distance(world.identities[a].name, world.identities[b].name) == 1
    # terciles of similarity are populated for every identity we might erase
    for c in world.identities[:10]:
        ds = [identity_distance(c, o) for o in world.identities if o is not c]
        assert min(ds) <= 3 and max(ds) >= 7


def test_generic_people_are_reserved(world: ToyWorld) -> None:
    named = {c.traits for c in world.identities}
    assert not named & set(world.generic_people)
    genders = Counter(dict(t)["gender"] for t in world.generic_people)
    assert genders["male"] > 0 and genders["female"] > 0


def test_world_is_deterministic_and_seeded() -> None:
    a, b, c = ToyWorld(0), ToyWorld(0), ToyWorld(1)
    assert [x.name for x in a.identities] == [x.name for x in b.identities]
    assert [x.traits for x in a.identities] == [x.traits for x in b.identities]
    assert [x.name for x in a.identities] != [x.name for x in c.identities]
    assert toy_world(0) is toy_world(0)


def test_concept_lookup_and_domains(world: ToyWorld) -> None:
    ident = world.identities[5]
    assert world.concept(ident.name.upper()) is ident
    assert world.concept("  Kitten ") is world.concept("cat")
    assert world.by_domain("identity") == list(world.identities)
    assert world.by_domain("object") == list(world.objects)
    assert world.index("puppy") == [c.name for c in world.objects].index("dog")
    with pytest.raises(KeyError, match="unknown concept"):
        world.concept("Jennifer Aniston")
    with pytest.raises(ValueError):
        world.by_domain("style")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ident.name = "x"  # type: ignore[misc]


def test_eval_prompts(world: ToyWorld) -> None:
    ident = world.identities[0]
    assert world.eval_prompts(ident) == [t.format(ident.name) for t in IDENTITY_TEMPLATES]
    assert world.eval_prompts("airplane") == [
        "a photo of the airplane",
        "a photo of the aeroplane",
        "a photo of the plane",
    ]


def test_mapping_phrases_parse_to_their_concept(world: ToyWorld) -> None:
    assert world.mapping_phrases == MAPPING_PHRASES
    for phrase in MAPPING_PHRASES:
        prompts = world.mapping_prompts(phrase)
        assert prompts
        for i, p in enumerate(prompts):
            spec = world.spec_for_prompt(p, seed=i)
            assert spec.concepts == (phrase,)
    male = {dict(world.spec_for_prompt("A portrait of a male celebrity", s).figures[0].traits)["gender"]
            for s in range(20)}  # fmt: skip
    assert male == {"male"}
    person = [world.spec_for_prompt("A portrait of a person", s).figures[0].traits for s in range(40)]
    assert set(person) <= set(world.generic_people) and len(set(person)) > 5
    assert world.spec_for_prompt("a photo of the ground", 0).figures[0].kind == "ground"
    assert world.spec_for_prompt("a photo of the object", 0).concepts == ("an object",)
    with pytest.raises(ValueError):
        world.mapping_prompts("cat")


def test_free_captions_are_deterministic_varied_and_parse(world: ToyWorld) -> None:
    caps = world.free_captions(200, seed=3)
    assert caps == world.free_captions(200, seed=3)
    assert caps != world.free_captions(200, seed=4)
    assert len(set(caps)) > 180
    n_objects = Counter()
    for cap in caps:
        spec = world.spec_for_prompt(cap, 0)
        assert spec.scene is not None and spec.style == "photo"
        n_objects[len(spec.figures)] += 1
        for f in spec.figures:
            assert f.name in cap
    assert set(n_objects) == {1, 2, 3}


def test_spec_for_prompt_rejects_unknown(world: ToyWorld) -> None:
    for bad in ("A portrait of Jennifer Aniston", "a photo of the spaceship", "a cat on the moon", ""):
        with pytest.raises(ValueError, match="not known"):
            world.spec_for_prompt(bad, 0)


def test_training_captions_follow_the_mix(world: ToyWorld) -> None:
    rng = np.random.default_rng(0)
    mix = CaptionMix(identity=1.0, object=1.0, variant=0.0, mapping=0.0, free=0.0, synonym_p=1.0)
    caps = [world.training_caption(rng, mix) for _ in range(300)]
    names = {c.name for c in world.identities}
    kinds = Counter("identity" if spec.concepts[0] in names else "object" for _, spec in caps)
    assert 100 < kinds["identity"] < 200 and kinds["identity"] + kinds["object"] == 300
    # synonym_p=1: object prompts never use the class name itself
    for cap, spec in caps:
        if spec.concepts[0] not in names:
            assert cap != f"a photo of the {spec.concepts[0]}"
    default = [world.training_caption(rng)[1] for _ in range(400)]
    assert any(s.scene is not None for s in default)  # free captions
    assert any(s.concepts[0] in MAPPING_PHRASES for s in default)
    assert {s.style for s in default} >= {"portrait", "sketch", "oil_painting", "public_event", "photo"}
