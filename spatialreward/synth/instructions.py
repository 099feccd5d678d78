"""Instruction text: templates per edit family, filled from a plan's words (object, colour, material, position).

The wording follows how people write edit requests in public editing benchmarks (imperatives, polite requests,
"I'd like…", goal statements), so the student's frozen sentence encoder sees varied text for the same edit.
Every local template names the target *and* its position ("the ball in the upper-left"), so the instruction alone
says where the edit belongs. Slots: ``{target}`` (e.g. "the ball in the upper-left"), ``{thing}``, ``{pos}``,
``{colour}``, ``{material}``, ``{background}``, ``{adj}``, ``{noun}``, ``{article}``.
"""

from __future__ import annotations

import numpy as np

TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolour_object": (
        "Make {target} {colour}.",
        "Change the colour of {target} to {colour}.",
        "Paint {target} {colour}.",
        "Turn {target} {colour}.",
        "Recolour {target} in {colour}.",
        "Can you make {target} {colour}?",
        "I'd like {target} to be {colour}.",
        "Give {target} a {colour} colour.",
        "The {thing} {pos} should be {colour}.",
    ),
    "recolour_area": (
        "Make {target} {colour}.",
        "Tint {target} {colour}.",
        "Colour {target} {colour}, leaving everything else as it is.",
        "Change {target} to a {colour} hue.",
        "Please turn {target} {colour}.",
        "Shift the colour of {target} towards {colour}.",
    ),
    "add": (
        "Add {target}.",
        "Put {article} {colour} {thing} {pos}.",
        "Place {article} {colour} {thing} {pos}.",
        "Insert {article} {colour} {thing} {pos} of the photo.",
        "There should be {article} {colour} {thing} {pos}.",
        "Draw {article} {colour} {thing} {pos}.",
        "Can you add {article} {colour} {thing} {pos}?",
        "I want {article} {colour} {thing} {pos} of the picture.",
    ),
    "remove": (
        "Remove {target}.",
        "Erase the {colour} {thing} {pos}.",
        "Delete the {thing} {pos}.",
        "Get rid of the {colour} {thing} {pos}.",
        "Take {target} out of the picture.",
        "Make {target} disappear.",
        "Please remove the {colour} {thing} {pos} and fill in the background.",
        "Clean up the photo by removing the {thing} {pos}.",
    ),
    "texture_object": (
        "Make {target} look like it is made of {material}.",
        "Replace the surface of {target} with {material}.",
        "Turn {target} into {material}.",
        "Give {target} a {material} texture.",
        "Change the material of {target} to {material}.",
        "I'd like {target} to be made of {material}.",
    ),
    "texture_area": (
        "Cover {target} with {material}.",
        "Give {target} a {material} texture.",
        "Fill {target} with a {material} pattern.",
        "Make {target} look like {material}.",
        "Replace the texture of {target} with {material}.",
    ),
    "background_object": (
        "Replace the background with {background}.",
        "Change the background behind the {thing} to {background}.",
        "Put the {thing} in front of {background}.",
        "Swap the background for {background}, keeping the {thing} as it is.",
        "Make the background {background} but leave the {thing} untouched.",
    ),
    "background_subject": (
        "Replace everything around the subject in the middle with {background}.",
        "Change the background behind the central subject to {background}.",
        "Keep the middle of the picture and make the background {background}.",
    ),
    "background_blur": (
        "Blur the background behind the {thing}.",
        "Make the background out of focus, keeping the {thing} sharp.",
        "Add a soft background blur around the {thing}.",
    ),
    "tone": (
        "Make the photo {adj}.",
        "Make the whole image {adj}.",
        "Give the picture {noun}.",
        "Apply {noun} to the entire image.",
        "Edit the photo so that it looks {adj} overall.",
        "Can you give this image {noun}?",
        "I'd like the whole photo to have {noun}.",
        "Change the overall tone: {noun}.",
    ),
}


def all_templates() -> list[str]:
    """Every distinct template string (the vocabulary a student sees)."""
    return sorted({t for family in TEMPLATES.values() for t in family})


def render_instruction(rng: np.random.Generator, family: str, words: dict[str, str]) -> str:
    """A random template of ``family`` filled with ``words``; the first letter is capitalised."""
    templates = TEMPLATES[family]
    if family == "tone":
        # "Make the photo look vintage" reads well, "Make the photo look like it was shot at night" too, but
        # "…looks look vintage overall" does not: drop templates whose grammar the phrase would break.
        if words["adj"].startswith(("look", "glow")):
            templates = tuple(t for t in templates if "looks {adj}" not in t)
    text = templates[int(rng.integers(len(templates)))].format(**words)
    return text[0].upper() + text[1:]
