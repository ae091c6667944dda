"""The toy world's catalogue: identities, objects, synonyms, templates, mapping concepts, captions.

It is a miniature of what Stable Diffusion v1.4 knows and what the paper probes: ~140 made-up
"celebrities" (trait combinations drawn by ``render.draw_face``), the 10 CIFAR-10 objects and
35 CIFAR-100 objects of App. C, the generic mapping concepts MACE maps onto ("a person",
"a {male, female} celebrity", "an object", "ground"), and COCO-like free captions.
Everything is a deterministic function of the world seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from resurgence.toyworld.render import (
    GENERIC_DRAWERS,
    LANDSCAPES,
    OBJECT_DRAWERS,
    SCENES,
    TRAIT_KEYS,
    TRAIT_VALUES,
    Figure,
    RenderSpec,
)
from resurgence.world import (
    IDENTITY_TEMPLATES,
    OBJECT_TEMPLATES,
    Concept,
    Domain,
    Traits,
    template_pairs,
    template_prompts,
)

# The render style each of the paper's templates (`resurgence.world`) asks for.
TEMPLATE_STYLES: dict[str, str] = {
    "A portrait of {}": "portrait",
    "An image capturing {} at a public event": "public_event",
    "A sketch of {}": "sketch",
    "An oil painting of {}": "oil_painting",
    "{} in an official photo": "official_photo",
    "a photo of the {}": "photo",
}
# Paraphrases seen in training only, so the toy text encoder does not tie a concept to one template.
IDENTITY_VARIANTS: tuple[str, ...] = ("A photo of {}", "A picture of {}", "{}")
OBJECT_VARIANTS: tuple[str, ...] = ("a photo of a {}", "an image of the {}", "a picture of a {}", "{}")
VARIANT_STYLE = "photo"

MAPPING_PHRASES: tuple[str, ...] = (
    "a person",
    "a male celebrity",
    "a female celebrity",
    "an object",
    "ground",
)
# Aliases MACE substitutes into templates ("a photo of the object", "a photo of the ground").
MAPPING_ALIASES: dict[str, str] = {"object": "an object", "the ground": "ground"}
# "an object": drawn from the generic pool (cube, ball, ...) with this probability, else a random class.
GENERIC_OBJECT_P = 0.75

CIFAR10: dict[str, tuple[str, ...]] = {
    "airplane": ("aeroplane", "plane"),
    "automobile": ("car",),
    "bird": ("songbird",),
    "cat": ("kitten",),
    "deer": ("stag",),
    "dog": ("puppy",),
    "frog": ("toad",),
    "horse": ("pony",),
    "ship": ("boat",),
    "truck": ("lorry",),
}
CIFAR100: dict[str, tuple[str, ...]] = {
    "trout": ("brook trout",),
    "ray": ("stingray",),
    "bee": ("honeybee",),
    "rose": ("rosebud",),
    "lobster": ("rock lobster",),
    "oak tree": ("oak",),
    "aquarium fish": ("goldfish",),
    "tulip": ("tulip flower",),
    "plain": ("prairie",),
    "bowl": ("dish",),
    "pine tree": ("fir tree",),
    "mountain": ("peak",),
    "house": ("cottage",),
    "crab": ("shore crab",),
    "willow tree": ("willow",),
    "motorcycle": ("motorbike",),
    "mushroom": ("toadstool",),
    "streetcar": ("tram",),
    "maple tree": ("maple",),
    "seal": ("sea lion",),
    "orange": ("tangerine",),
    "cup": ("mug",),
    "flatfish": ("flounder",),
    "sunflower": ("sunflower blossom",),
    "shark": ("great white shark",),
    "hamster": ("pet hamster",),
    "tiger": ("tigress",),
    "tank": ("battle tank",),
    "turtle": ("tortoise",),
    "cloud": ("cumulus cloud",),
    "orchid": ("orchid flower",),
    "road": ("highway",),
    "elephant": ("pachyderm",),
    "rocket": ("space rocket",),
    "raccoon": ("racoon",),
}

# Syllables for made-up names (chosen so the full names are no real celebrity's).
_FIRST_PRE = (
    "Or",
    "Ka",
    "Mi",
    "Sel",
    "Ve",
    "Ta",
    "Lo",
    "Bri",
    "Ny",
    "Ael",
    "Ze",
    "Ila",
    "Ru",
    "Fen",
    "Ish",
    "Cas",
)
_FIRST_F = ("la", "ra", "wen", "na", "lia", "ssa", "rie", "ette")
_FIRST_M = ("rik", "dan", "vo", "mir", "tho", "sen", "lan", "dor")
_LAST_PRE = (
    "Van",
    "Mor",
    "Quil",
    "Bras",
    "Del",
    "Thorn",
    "Ask",
    "Kes",
    "Wyl",
    "Dun",
    "Zar",
    "Hal",
    "Pell",
    "Grim",
    "Orv",
    "Tam",
)
_LAST_SUF = ("treck", "vale", "wick", "mont", "bury", "holt", "rane", "stow", "ley", "drin", "gast", "moor")

# Traits a near-alike twin may differ in (all clearly visible in every style).
_NEAR_TRAITS = ("hair_colour", "hair_style", "accessory", "shirt", "skin", "face")


@dataclass(frozen=True)
class CaptionMix:
    """What the toy text-to-image model is trained on (probabilities, normalised on use)."""

    identity: float = 0.40  # identity templates x names: the "celebrities known to SD" signal
    object: float = 0.25  # object template x (name or synonym): synonyms must be learned for MACE eval
    variant: float = 0.07  # paraphrased templates, so the text encoder generalises beyond one template
    mapping: float = 0.08  # generic mapping concepts ("a person", "ground", ...) the base model must draw
    free: float = 0.20  # COCO-like free captions (CLIP score / FID prompts)
    synonym_p: float = 0.5  # for object prompts: probability of a synonym instead of the class name


DEFAULT_MIX = CaptionMix()


def identity_distance(a: Concept | Traits, b: Concept | Traits) -> int:
    """Number of differing visual traits; the toy analogue of CLIP distance between celebrities."""
    ta = dict(a.traits if isinstance(a, Concept) else a)
    tb = dict(b.traits if isinstance(b, Concept) else b)
    return sum(ta[k] != tb[k] for k in TRAIT_KEYS)


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def fill(template: str, phrase: str) -> str:
    """Fill a template; "a {}" becomes "an {}" before a vowel, as a caption writer would."""
    if template.startswith("a {}") or " a {}" in template:
        template = re.sub(r"\ba \{\}", lambda _: f"{_article(phrase)} {{}}", template, count=1)
    return template.format(phrase)


def normalise(prompt: str) -> str:
    return " ".join(prompt.strip().rstrip(".").lower().split())


# Gender stays visible: women never bald/spiky or bearded (lips/lashes mark them), men never in a bun.
_GENDER_EXCLUDES: dict[str, dict[str, tuple[str, ...]]] = {
    "female": {"hair_style": ("bald", "spiky"), "facial_hair": ("moustache", "beard")},
    "male": {"hair_style": ("bun",), "accessory": ("earrings",)},
}


def allowed_values(key: str, gender: str) -> tuple[str, ...]:
    """Values a trait may take for a gender."""
    bad = _GENDER_EXCLUDES[gender].get(key, ())
    return tuple(v for v in TRAIT_VALUES[key] if v not in bad)


def _sample_traits(rng: random.Random, gender: str | None = None) -> Traits:
    g = gender or rng.choice(TRAIT_VALUES["gender"])
    t = {k: rng.choice(allowed_values(k, g)) for k in TRAIT_KEYS if k != "gender"}
    t["gender"] = g
    return tuple((k, t[k]) for k in TRAIT_KEYS)


def _modify(traits: Traits, key: str, value: str) -> Traits:
    return tuple((k, value if k == key else v) for k, v in traits)


class ToyWorld:
    """The catalogue; build with ``toy_world(seed)`` (cached). Treat as immutable."""

    name = "toy"
    identity_templates = IDENTITY_TEMPLATES
    object_templates = OBJECT_TEMPLATES
    mapping_phrases = MAPPING_PHRASES

    def __init__(self, seed: int = 0, n_base: int = 105, n_near: int = 35, n_generic: int = 64):
        self.seed = seed
        rng = random.Random(seed)
        base: list[Traits] = []
        while len(base) < n_base:  # far-apart base identities: every pair differs in >= 3 traits
            t = _sample_traits(rng)
            if all(identity_distance(t, b) >= 3 for b in base):
                base.append(t)
        near: list[Traits] = []
        self.near_pairs: tuple[tuple[int, int], ...]
        pairs: list[tuple[int, int]] = []
        i = 0
        while len(near) < n_near:  # near-alike twins: differ from their base in exactly one trait
            src = base[i % n_base]
            i += 1
            key = rng.choice(_NEAR_TRAITS)
            val = rng.choice([v for v in allowed_values(key, dict(src)["gender"]) if v != dict(src)[key]])
            t = _modify(src, key, val)
            others = [x for x in base + near if x is not src]
            if all(identity_distance(t, x) >= 2 for x in others):
                pairs.append(((i - 1) % n_base, n_base + len(near)))
                near.append(t)
        all_traits = base + near
        generic: list[Traits] = []
        while len(generic) < n_generic:  # reserved for "a person"/"a {male,female} celebrity"
            t = _sample_traits(rng, "male" if len(generic) % 2 == 0 else "female")
            if all(identity_distance(t, x) >= 2 for x in all_traits) and t not in generic:
                generic.append(t)
        names = self._names(rng, [dict(t)["gender"] for t in all_traits])
        self.identities: tuple[Concept, ...] = tuple(
            Concept(n, "identity", (), t) for n, t in zip(names, all_traits, strict=True)
        )
        self.near_pairs = tuple(pairs)
        self.generic_people: tuple[Traits, ...] = tuple(generic)
        objs = [Concept(k, "object", v, (("drawing", k), ("dataset", "cifar10"))) for k, v in CIFAR10.items()]
        objs += [
            Concept(k, "object", v, (("drawing", k), ("dataset", "cifar100"))) for k, v in CIFAR100.items()
        ]
        self.objects: tuple[Concept, ...] = tuple(objs)
        self.mapping: dict[str, Concept] = {
            "a person": Concept("a person", "identity", (), (("mapping", "person"),)),
            "a male celebrity": Concept("a male celebrity", "identity", (), (("mapping", "male"),)),
            "a female celebrity": Concept("a female celebrity", "identity", (), (("mapping", "female"),)),
            "an object": Concept("an object", "object", ("object",), (("mapping", "object"),)),
            "ground": Concept("ground", "object", ("the ground",), (("mapping", "ground"),)),
        }
        self._lookup: dict[str, Concept] = {}
        for c in (*self.identities, *self.objects, *self.mapping.values()):
            for n in c.names:
                key = normalise(n)
                if key in self._lookup:
                    raise AssertionError(f"name clash: {n!r}")
                self._lookup[key] = c
        self._index = {c.name: i for i, c in enumerate(self.identities)}
        self._index.update({c.name: i for i, c in enumerate(self.objects)})

    @staticmethod
    def _names(rng: random.Random, genders: list[str]) -> list[str]:
        used_first: set[str] = set()
        used_last: set[str] = set()
        out: list[str] = []
        for g in genders:
            while True:
                first = rng.choice(_FIRST_PRE) + rng.choice(_FIRST_F if g == "female" else _FIRST_M)
                last = rng.choice(_LAST_PRE) + rng.choice(_LAST_SUF)
                # unique surnames: one token sequence identifies one person, as for real celebrities
                if last not in used_last and (first, last) not in used_first:
                    used_last.add(last)
                    used_first.add(first)
                    out.append(f"{first} {last}")
                    break
        return out

    # ---------------------------------------------------------------- lookup
    def concept(self, name_or_synonym: str) -> Concept:
        try:
            return self._lookup[normalise(name_or_synonym)]
        except KeyError:
            raise KeyError(f"unknown concept {name_or_synonym!r}") from None

    def by_domain(self, domain: Domain) -> list[Concept]:
        """Named concepts of a domain (mapping concepts excluded)."""
        if domain == "identity":
            return list(self.identities)
        if domain == "object":
            return list(self.objects)
        raise ValueError(f"unknown domain {domain!r}")

    def index(self, concept: Concept | str) -> int:
        """Index into ``identities`` or ``objects`` (the detector / classifier label)."""
        name = concept.name if isinstance(concept, Concept) else self.concept(concept).name
        return self._index[name]

    def identity_distance(self, a: Concept | str, b: Concept | str) -> int:
        ca = a if isinstance(a, Concept) else self.concept(a)
        cb = b if isinstance(b, Concept) else self.concept(b)
        return identity_distance(ca, cb)

    # ---------------------------------------------------------------- prompts
    def eval_prompts(self, concept: Concept | str) -> list[str]:
        """Paper's evaluation prompts: 5 identity templates, or the object template x (name, synonyms)."""
        return template_prompts(concept if isinstance(concept, Concept) else self.concept(concept))

    def eval_templates(self, concept: Concept | str) -> list[tuple[str, str]]:
        """`eval_prompts` with the template of each."""
        return template_pairs(concept if isinstance(concept, Concept) else self.concept(concept))

    def mapping_prompts(self, phrase: str) -> list[str]:
        """Prompts that render a mapping concept (the phrase in the templates MACE substitutes it into)."""
        c = self.concept(phrase)
        if "mapping" not in dict(c.traits):
            raise ValueError(f"{phrase!r} is not a mapping phrase")
        if c.name == "ground":
            return ["a photo of the ground", "a photo of ground"]
        out = [t.format(c.name) for t in IDENTITY_TEMPLATES]
        if c.name == "an object":
            out += ["a photo of the object", "a photo of an object"]
        return out

    @cached_property
    def _fixed_prompts(self) -> dict[str, tuple[str, str]]:
        """normalised prompt -> (style, concept name/phrase) for every template x filler combination."""
        table: dict[str, tuple[str, str]] = {}
        templates = [(t, TEMPLATE_STYLES[t]) for t in (*IDENTITY_TEMPLATES, *OBJECT_TEMPLATES)]
        templates += [(t, VARIANT_STYLE) for t in (*IDENTITY_VARIANTS, *OBJECT_VARIANTS)]
        for key, c in self._lookup.items():
            phrase = c.name if key == normalise(c.name) else key
            for t, style in templates:
                table.setdefault(normalise(fill(t, phrase)), (style, key))
        return table

    @cached_property
    def _free_objects(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.objects if c.name not in LANDSCAPES)

    @cached_property
    def _free_re(self) -> dict[str, re.Pattern[str]]:
        names = sorted(
            (normalise(n) for c in self.objects if c.name not in LANDSCAPES for n in c.names),
            key=len,
            reverse=True,
        )
        o = r"(?:a|an|the) (" + "|".join(re.escape(n) for n in names) + ")"
        return {
            "single": re.compile(rf"^{o}$"),
            "pair": re.compile(rf"^{o} (?:and|next to) {o}$"),
            "above": re.compile(rf"^{o} above {o}$"),
            "triple": re.compile(rf"^{o}, {o} and {o}$"),
        }

    def free_captions(self, n: int, seed: int) -> list[str]:
        """COCO-caption analogues: 1-3 objects and a scene, e.g. "a cat and a truck on the street"."""
        rng = random.Random(seed)
        objs, scenes = self._free_objects, tuple(SCENES)
        out: list[str] = []
        for _ in range(n):
            u = rng.random()
            k = 1 if u < 0.35 else (2 if u < 0.8 else 3)
            picks = rng.sample(objs, k)
            a = [f"{_article(p)} {p}" for p in picks]
            if k == 1:
                head = a[0]
            elif k == 2:
                head = f"{a[0]} {rng.choice(('and', 'next to', 'above'))} {a[1]}"
            else:
                head = f"{a[0]}, {a[1]} and {a[2]}"
            out.append(f"{head} {rng.choice(scenes)}")
        return out

    # ---------------------------------------------------------------- prompt -> render spec
    def figure(self, name: str, rng: random.Random) -> Figure:
        """A drawable figure for a concept or mapping phrase; generic ones draw their instance from ``rng``."""
        c = self.concept(name)
        m = dict(c.traits).get("mapping")
        if m is None:
            if c.domain == "identity":
                return Figure(c.name, "face", c.traits)
            return Figure(c.name, "object", (("drawing", c.name),))
        if m in ("person", "male", "female"):
            pool = [t for t in self.generic_people if m == "person" or dict(t)["gender"] == m]
            return Figure(c.name, "face", pool[rng.randrange(len(pool))])
        if m == "object":
            if rng.random() < GENERIC_OBJECT_P:
                keys = tuple(GENERIC_DRAWERS)
            else:
                keys = tuple(o.name for o in self.objects)
            return Figure(c.name, "object", (("drawing", keys[rng.randrange(len(keys))]),))
        return Figure(c.name, "ground")

    def spec_for_prompt(self, prompt: str, seed: int = 0) -> RenderSpec:
        """Parse a prompt this world produces into a RenderSpec (ValueError if it is not one)."""
        key = normalise(prompt)
        rng = random.Random(seed * 7919 + 17)
        hit = self._fixed_prompts.get(key)
        if hit is not None:
            style, name = hit
            return RenderSpec(style=style, figures=(self.figure(name, rng),), caption=prompt)  # type: ignore[arg-type]
        for scene_text, scene in SCENES.items():
            if key.endswith(" " + scene_text):
                head = key[: -len(scene_text) - 1]
                for layout, pat in self._free_re.items():
                    mt = pat.match(head)
                    if mt:
                        figs = tuple(self.figure(g, rng) for g in mt.groups())
                        return RenderSpec("photo", figs, scene=scene, layout=layout, caption=prompt)  # type: ignore[arg-type]
        raise ValueError(f"prompt not known to the toy world: {prompt!r}")

    def training_caption(
        self, rng: np.random.Generator, mix: CaptionMix | None = None
    ) -> tuple[str, RenderSpec]:
        """One (caption, spec) pair of the text-to-image training distribution ``mix``."""
        mix = mix or DEFAULT_MIX
        w = np.array([mix.identity, mix.object, mix.variant, mix.mapping, mix.free], float)
        kind = int(rng.choice(5, p=w / w.sum()))
        if kind == 0:
            c = self.identities[rng.integers(len(self.identities))]
            cap = IDENTITY_TEMPLATES[rng.integers(len(IDENTITY_TEMPLATES))].format(c.name)
        elif kind == 1:
            cap = OBJECT_TEMPLATES[0].format(self._object_word(rng, mix))
        elif kind == 2:
            if rng.random() < 0.5:
                c = self.identities[rng.integers(len(self.identities))]
                cap = fill(IDENTITY_VARIANTS[rng.integers(len(IDENTITY_VARIANTS))], c.name)
            else:
                cap = fill(OBJECT_VARIANTS[rng.integers(len(OBJECT_VARIANTS))], self._object_word(rng, mix))
        elif kind == 3:
            prompts = self.mapping_prompts(self.mapping_phrases[rng.integers(len(self.mapping_phrases))])
            cap = prompts[rng.integers(len(prompts))]
        else:
            cap = self.free_captions(1, int(rng.integers(2**31)))[0]
        return cap, self.spec_for_prompt(cap, int(rng.integers(2**31)))

    def _object_word(self, rng: np.random.Generator, mix: CaptionMix) -> str:
        c = self.objects[rng.integers(len(self.objects))]
        if c.synonyms and rng.random() < mix.synonym_p:
            return c.synonyms[rng.integers(len(c.synonyms))]
        return c.name


@lru_cache(maxsize=8)
def toy_world(seed: int = 0) -> ToyWorld:
    """The (cached) toy world of ``seed``."""
    return ToyWorld(seed)


# every named object class must be drawable
assert set(CIFAR10) | set(CIFAR100) == set(OBJECT_DRAWERS), "object catalogue and drawers disagree"
