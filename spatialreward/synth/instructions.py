"""Instruction text: templates per edit family, filled from a plan's words (object, colour, material, position).

The wording follows how people write edit requests in public editing benchmarks (imperatives, polite requests,
"I'd like…", goal statements), so the student's frozen sentence encoder sees varied text for the same edit.
Every local template names the target *and* its position ("the ball in the upper-left"), so the instruction alone
says where the edit belongs. Slots: ``{target}`` (e.g. "the ball in the upper-left"), ``{thing}``, ``{pos}``,
``{colour}``, ``{material}``, ``{background}``, ``{adj}``, ``{noun}``, ``{article}``, ``{dest}`` ("to the upper-right")
and ``{dest_at}`` ("in the upper-right") for moves.
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
    "recolour_two": (
        "Make {target} {colour}.",
        "Paint {target} {colour}.",
        "Change the colour of {target} to {colour}.",
        "Turn both {target} {colour}.",
        "Can you make {target} {colour}?",
        "I'd like {target} to be {colour}.",
    ),
    "move": (
        "Move {target} {dest}.",
        "Shift the {thing} {pos} {dest}.",
        "Drag {target} {dest}.",
        "Can you move {target} {dest}?",
        "Please move the {colour} {thing} {pos} {dest}.",
        "I'd like {target} moved {dest}.",
    ),
    "resize_up": (
        "Make {target} bigger.",
        "Enlarge {target}.",
        "Scale up the {thing} {pos}.",
        "Make the {colour} {thing} {pos} larger.",
        "Can you make {target} bigger?",
        "I'd like {target} to be larger.",
    ),
    "resize_down": (
        "Make {target} smaller.",
        "Shrink {target}.",
        "Scale down the {thing} {pos}.",
        "Make the {colour} {thing} {pos} a lot smaller.",
        "Can you make {target} smaller?",
        "I'd like {target} to be smaller.",
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


# ---------------------------------------------------------------------------------------------------------------
# Phrasing families (the diverse recipe): whole ways of writing an instruction, one of which can be held out
# ---------------------------------------------------------------------------------------------------------------

PHRASINGS = ("imperative", "request", "descriptive", "terse")
DEFAULT_HELDOUT_PHRASING = "terse"

# Goal statements ("X should be Y") beyond the few in `TEMPLATES`.
DESCRIPTIVE: dict[str, tuple[str, ...]] = {
    "recolour_object": ("In the edited photo, {target} is {colour}.", "{target} should end up {colour}."),
    "recolour_area": ("{target} should have a {colour} tint.", "The result shows {target} in {colour}."),
    "add": ("The photo has {article} {colour} {thing} {pos}.", "The picture now shows {article} {colour} {thing} "
            "{pos}."),
    "remove": ("The photo has no {thing} {pos} any more.", "{target} should be gone."),
    "texture_object": ("{target} should look like {material}.", "In the result, {target} is made of {material}."),
    "texture_area": ("{target} should be covered in {material}.", "The result has {material} over {target}."),
    "background_object": ("The {thing} should stand in front of {background}.",
                          "Behind the {thing} there should be {background}."),
    "background_subject": ("The central subject should stand in front of {background}.",),
    "background_blur": ("The background behind the {thing} should be out of focus.",),
    "recolour_two": ("{target} should both be {colour}.", "In the result, {target} are {colour}."),
    "move": ("{target} should be {dest_at} instead.", "The {thing} {pos} should end up {dest_at}."),
    "resize_up": ("{target} should be bigger.", "In the result, the {thing} {pos} is larger."),
    "resize_down": ("{target} should be smaller.", "In the result, the {thing} {pos} is smaller."),
    "tone": ("The whole image has {noun}.", "The photo ends up with {noun} everywhere."),
}
# Polite requests for the families whose `TEMPLATES` have none.
REQUEST: dict[str, tuple[str, ...]] = {
    "texture_area": ("Could you cover {target} with {material}?", "Please give {target} a {material} texture."),
    "background_object": ("Could you replace the background with {background}?",
                          "Please put the {thing} in front of {background}."),
    "background_subject": ("Could you put {background} around the subject in the middle?",),
    "background_blur": ("Could you blur the background behind the {thing}?",),
    "texture_object": ("Could you make {target} look like {material}?",),
    "recolour_area": ("Could you tint {target} {colour}?",),
}
# Terse, note-like instructions (a caption fragment, an arrow): the family held out by default.
TERSE: dict[str, tuple[str, ...]] = {
    "recolour_object": ("{thing} {pos} -> {colour}", "{colour} {thing} {pos}", "{target}: {colour}"),
    "recolour_area": ("{target} -> {colour}", "{colour} tint, {target}"),
    "add": ("+ {colour} {thing} {pos}", "new {colour} {thing} {pos}"),
    "remove": ("no {thing} {pos}", "{thing} {pos}: remove", "- {colour} {thing} {pos}"),
    "texture_object": ("{thing} {pos} -> {material}", "{material} {thing} {pos}"),
    "texture_area": ("{target} -> {material}", "{material} texture, {target}"),
    "background_object": ("background -> {background}", "bg: {background}, keep {thing}"),
    "background_subject": ("background: {background}, subject kept",),
    "background_blur": ("blur bg behind {thing}", "background blur, {thing} sharp"),
    "recolour_two": ("{target} -> {colour}", "{colour}: {target}"),
    "move": ("{thing} {pos} -> {dest_at}", "move {target} {dest}", "{target}: move {dest}"),
    "resize_up": ("{thing} {pos}: bigger", "enlarge {target}", "bigger: {target}"),
    "resize_down": ("{thing} {pos}: smaller", "shrink {target}", "smaller: {target}"),
    "tone": ("whole photo: {noun}", "{noun}, global"),
}
_REQUEST_START = ("Can you", "Please", "I'd like", "I want")
_DESCRIPTIVE_MARK = ("should be", "There should")

# Word → synonyms (whole words, applied to the rendered text with probability 0.5 each).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"), "orange": ("amber", "tangerine"), "yellow": ("golden", "lemon-yellow"),
    "green": ("emerald", "leaf-green"), "teal": ("turquoise", "blue-green"), "blue": ("navy", "cobalt"),
    "purple": ("violet", "lilac"), "pink": ("rose", "magenta"), "brown": ("chocolate", "tan"),
    "grey": ("gray", "silver"), "ball": ("sphere",), "box": ("cube", "crate"), "sign": ("signpost", "board"),
    "can": ("tin",), "cushion": ("pillow",), "balloon": ("party balloon",), "cone": ("traffic cone",),
    "photo": ("picture", "image"), "remove": ("erase",), "wood": ("timber",), "marble": ("stone",),
    "tiles": ("tiling",), "background": ("backdrop",), "centre": ("center",),
}
_SYNONYM_RE = None


def phrasing_of(template: str) -> str:
    """The phrasing family of a `TEMPLATES` entry: request, descriptive or imperative."""
    if template.startswith(_REQUEST_START):
        return "request"
    if any(mark in template for mark in _DESCRIPTIVE_MARK):
        return "descriptive"
    return "imperative"


def templates_for(family: str, phrasing: str) -> tuple[str, ...]:
    """The templates of an edit ``family`` written in ``phrasing``."""
    if phrasing == "terse":
        return TERSE[family]
    own = tuple(t for t in TEMPLATES[family] if phrasing_of(t) == phrasing)
    extra = {"descriptive": DESCRIPTIVE, "request": REQUEST}.get(phrasing, {})
    return own + extra.get(family, ())


def with_synonyms(rng: np.random.Generator, text: str) -> str:
    """``text`` with each known word replaced by a random synonym half of the time (one draw per word found)."""
    import re

    global _SYNONYM_RE
    if _SYNONYM_RE is None:
        _SYNONYM_RE = re.compile(r"\b(" + "|".join(sorted(SYNONYMS, key=len, reverse=True)) + r")\b")

    def swap(match):
        options = SYNONYMS[match.group(1)]
        if rng.random() < 0.5:
            return match.group(1)
        return options[int(rng.integers(len(options)))]

    return _SYNONYM_RE.sub(swap, text)


def render_phrased(rng: np.random.Generator, family: str, words: dict[str, str],
                   phrasings: tuple[str, ...]) -> tuple[str, str]:
    """``(instruction, phrasing)``: a phrasing drawn from ``phrasings`` (those with templates for ``family``), a
    template of it filled with ``words``, then synonyms. Position phrases are never swapped: the instruction must
    still say where the edit belongs."""
    usable = [p for p in phrasings if templates_for(family, p)]
    if not usable:
        raise ValueError(f"no templates for edit family {family!r} in phrasings {phrasings}")
    phrasing = usable[int(rng.integers(len(usable)))]
    templates = templates_for(family, phrasing)
    if family == "tone" and words["adj"].startswith(("look", "glow")):
        templates = tuple(t for t in templates if "looks {adj}" not in t) or templates
    text = templates[int(rng.integers(len(templates)))].format(**words)
    pos = words.get("pos", "")
    if pos and pos in text:  # protect the position phrase from synonyms ("centre" → "center" is fine elsewhere)
        head, _, tail = text.partition(pos)
        text = with_synonyms(rng, head) + pos + with_synonyms(rng, tail)
    else:
        text = with_synonyms(rng, text)
    return text[0].upper() + text[1:], phrasing
