"""The world a study runs in: its concepts, evaluation prompts and free captions.

The toy world is procedurally defined (`resurgence.toyworld`); the real world (SD v1.4) is
defined by the config's concept lists and a caption file. Both answer the same questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Domain = Literal["identity", "object"]
Traits = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Concept:
    """A concept of a world; ``traits`` are the toy world's visual traits (identities) or drawing keys (objects)."""

    name: str
    domain: Domain
    synonyms: tuple[str, ...] = ()
    traits: Traits = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)

    def trait(self, key: str) -> str:
        for k, v in self.traits:
            if k == key:
                return v
        raise KeyError(f"{self.name!r} has no trait {key!r}")


# Paper App. C.1 evaluation templates.
IDENTITY_TEMPLATES: tuple[str, ...] = (
    "A portrait of {}",
    "An image capturing {} at a public event",
    "A sketch of {}",
    "An oil painting of {}",
    "{} in an official photo",
)
OBJECT_TEMPLATES: tuple[str, ...] = ("a photo of the {}",)


class World(Protocol):
    name: str

    def concept(self, name: str) -> Concept: ...

    def eval_prompts(self, concept: Concept) -> list[str]: ...

    def eval_templates(self, concept: Concept) -> list[tuple[str, str]]:
        """(template, prompt) of each of `eval_prompts`, in their order: the records carry the template."""
        ...

    def free_captions(self, n: int, seed: int) -> list[str]: ...


def template_pairs(concept: Concept) -> list[tuple[str, str]]:
    """The paper's evaluation prompts (App. C.1), each with its template: every template x every name."""
    if concept.domain == "identity":
        return [(t, t.format(concept.name)) for t in IDENTITY_TEMPLATES]
    return [(t, t.format(n)) for n in concept.names for t in OBJECT_TEMPLATES]


def template_prompts(concept: Concept) -> list[str]:
    """Evaluation prompts of the paper (App. C.1): every template x every name of the concept."""
    return [prompt for _, prompt in template_pairs(concept)]


# Worlds of real models (their concepts listed in the config): SD v1.4's and SD v2.1's.
REAL_WORLDS = ("sd14", "sd21")


@dataclass
class ListedWorld:
    """A world defined by explicit concept lists (the real-model presets)."""

    concepts: dict[str, Concept]
    caption_file: str | None = None
    name: str = "sd14"

    def concept(self, name: str) -> Concept:
        if name not in self.concepts:
            raise KeyError(f"unknown concept {name!r}")
        return self.concepts[name]

    def eval_prompts(self, concept: Concept) -> list[str]:
        return template_prompts(concept)

    def eval_templates(self, concept: Concept) -> list[tuple[str, str]]:
        return template_pairs(concept)

    def free_captions(self, n: int, seed: int) -> list[str]:
        import random

        if not self.caption_file:
            raise FileNotFoundError("evaluation.captions.file is not set: point it to a caption list (COCO)")
        lines = [s.strip() for s in Path(self.caption_file).read_text().splitlines() if s.strip()]
        rng = random.Random(seed)
        return rng.sample(lines, min(n, len(lines)))


def get_world(config: dict[str, Any]) -> World:
    """The world named by ``config['world']``."""
    if config["world"] == "toy":
        from resurgence.toyworld.concepts import toy_world

        return toy_world(int(config["toyworld"]["seed"]))
    # Synonyms (config key `synonyms: {concept: [..]}`) join the concept's evaluation prompts and CLIP labels.
    synonyms = {k: tuple(v) for k, v in (config.get("synonyms") or {}).items()}
    concepts: dict[str, Concept] = {}
    for task in config["tasks"].values():
        for name in [*task["erase"], *task.get("retain", [])]:
            concepts.setdefault(
                name, Concept(name=name, domain=task["domain"], synonyms=synonyms.get(name, ()))
            )
    for fs in config["finetune_sets"].values():
        for name in fs.get("concepts", []):
            domain = fs.get("domain", "identity")
            concepts.setdefault(name, Concept(name=name, domain=domain, synonyms=synonyms.get(name, ())))
    return ListedWorld(
        concepts, caption_file=config["evaluation"]["captions"].get("file"), name=config["world"]
    )
