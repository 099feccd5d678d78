"""Golden tests of the answer parser on a corpus of realistic VLM outputs we wrote (one case per failure mode)."""

from __future__ import annotations

import pytest

from spatialreward.teacher.parsing import (
    FLAGS,
    MIN_BOX_SIDE,
    extract_json_object,
    parse_answer,
    parse_pq,
    parse_sc,
)
from spatialreward.types import SCORE_MAX

CLEAN_SC = (
    '{"edit_region": [{"id": 0, "label": "red hat", "bbox_2d": [120, 80, 340, 260]}, '
    '{"id": 1, "label": "shadow", "bbox_2d": [100, 600, 500, 700]}], '
    '"reasoning": "A red hat was added at <|bbox_0|>; its shadow <|bbox_1|> fits. <|global|> is unchanged.", '
    '"score": [22, 19]}'
)

# name, call, text, expected status, expected scores, expected boxes (None = not checked)
CASES = [
    ("clean_sc", "sc", CLEAN_SC, "ok", (22, 19), [[120, 80, 340, 260], [100, 600, 500, 700]]),
    ("fenced_json", "sc",
     "Here is my evaluation:\n```json\n" + CLEAN_SC + "\n```\nLet me know if you need more.",
     "ok", (22, 19), [[120, 80, 340, 260], [100, 600, 500, 700]]),
    ("fence_without_language", "pq", '```\n{"reasoning": "Sharp.", "score": [20, 21]}\n```', "ok", (20, 21), []),
    ("think_block", "sc",
     '<think>The user wants {"score": [0, 0]} style output... the hat is at top left.</think>\n' + CLEAN_SC,
     "ok", (22, 19), None),
    ("think_opened_by_template", "pq",
     'Looking at the seams near the edge {maybe}...\n</think>\n{"reasoning": "Clean.", "score": [23, 24]}',
     "ok", (23, 24), []),
    ("unclosed_think", "pq", '<think>I need to look at the lighting, the shadows and', "parse_error", None, None),
    ("prose_around", "sc",
     'Sure! Based on the two images, the answer is {"edit_region": [], "reasoning": "Nothing changed at '
     '<|global|>.", "score": [0, 25]} I hope this helps {really}.',
     "ok", (0, 25), []),
    ("braces_in_reasoning", "pq",
     '{"reasoning": "The sign reads {OPEN} and the } is fine", "score": [18, 17]}', "ok", (18, 17), []),
    ("truncated_mid_object", "sc",
     '{"edit_region": [{"id": 0, "label": "cat", "bbox_2d": [10, 20, 300, 400]}], "reasoning": "The cat at <|bbox_0|'
     '> looks', "parse_error", None, None),
    ("single_quotes_trailing_commas", "sc",
     "{'edit_region': [{'id': 0, 'label': 'dog', 'bbox_2d': [5, 5, 500, 500],},], 'reasoning': 'A dog, "
     "added.', 'score': [18, 20,],}", "ok", (18, 20), [[5, 5, 500, 500]]),
    ("python_literals_bare_keys", "pq", "{reasoning: None, score: [21, 22], extra: True}", "ok", (21, 22), []),
    ("scores_as_strings", "sc",
     '{"edit_region": [], "reasoning": "ok", "score": ["20", "15/25"]}', "ok", (20, 15), []),
    ("score_list_as_string", "pq", '{"reasoning": "ok", "score": "[19, 24]"}', "ok", (19, 24), []),
    ("boxes_as_strings", "sc",
     '{"edit_region": [{"id": 0, "label": "sky", "bbox_2d": "[0, 0, 1000, 400]"}, '
     '{"id": 1, "label": "tree", "bbox_2d": "600, 300, 800, 900"}], "reasoning": "", "score": [12, 13]}',
     "ok", (12, 13), [[0, 0, 1000, 400], [600, 300, 800, 900]]),
    ("box_overshoot_clamped", "sc",
     '{"edit_region": [{"id": 0, "label": "car", "bbox_2d": [-20, 500, 1040, 1030]}], "reasoning": "", '
     '"score": [10, 10]}', "ok", (10, 10), [[0, 500, 1000, 1000]]),
    # Far past 0–1000 with no image size to read them against: their frame is unknown, never clamped to 1000.
    ("box_far_out_of_range", "sc",
     '{"edit_region": [{"id": 0, "label": "car", "bbox_2d": [-20, 500, 1100, 1030]}], "reasoning": "", '
     '"score": [10, 10]}', "parse_error", None, None),
    ("box_inverted", "sc",
     '{"edit_region": [{"id": 0, "label": "lamp", "bbox_2d": [700, 650, 300, 250]}], "reasoning": "", '
     '"score": [14, 16]}', "ok", (14, 16), [[300, 250, 700, 650]]),
    ("degenerate_boxes_dropped", "sc",
     '{"edit_region": [{"id": 0, "label": "line", "bbox_2d": [100, 100, 100, 900]}, '
     '{"id": 1, "label": "on the edge", "bbox_2d": [1000, 300, 1040, 600]}, '
     '{"id": 2, "label": "bird", "bbox_2d": [50, 60, 150, 160]}], "reasoning": "<|bbox_2|>", "score": [9, 11]}',
     "ok", (9, 11), [[50, 60, 150, 160]]),
    ("bare_box_lists", "sc",
     '{"edit_region": [[10, 10, 110, 110]], "reasoning": "", "score": [7, 8]}', "ok", (7, 8), [[10, 10, 110, 110]]),
    ("score_out_of_range", "sc", '{"edit_region": [], "reasoning": "", "score": [30, 12]}', "parse_error", None, None),
    ("score_negative", "pq", '{"reasoning": "", "score": [-1, 12]}', "parse_error", None, None),
    ("score_wrong_length", "sc", '{"edit_region": [], "reasoning": "", "score": [20, 15, 10]}', "parse_error",
     None, None),
    ("score_not_number", "pq", '{"reasoning": "", "score": ["high", 20]}', "parse_error", None, None),
    ("score_nan", "pq", '{"reasoning": "", "score": [NaN, 20]}', "parse_error", None, None),
    ("score_missing", "pq", '{"reasoning": "looks fine"}', "parse_error", None, None),
    ("empty_regions", "sc", '{"edit_region": [], "reasoning": "Identical images.", "score": [0, 25]}', "ok",
     (0, 25), []),
    ("sc_without_regions_key", "sc", '{"reasoning": "", "score": [20, 20]}', "parse_error", None, None),
    ("region_without_box", "sc",
     '{"edit_region": [{"id": 0, "label": "cat"}], "reasoning": "", "score": [20, 20]}', "parse_error", None, None),
    ("box_wrong_length", "sc",
     '{"edit_region": [{"id": 0, "bbox_2d": [1, 2, 3]}], "reasoning": "", "score": [20, 20]}', "parse_error",
     None, None),
    ("pq_without_regions", "pq", '{"reasoning": "Natural light, no seams.", "score": [22, 23]}', "ok", (22, 23), []),
    ("pq_with_regions_ignored", "pq",
     '{"edit_region": [{"id": 0, "bbox_2d": [0, 0, 10, 10]}], "reasoning": "", "score": [22, 23]}', "ok",
     (22, 23), []),
    ("float_scores", "pq", '{"reasoning": "", "score": [21.5, 0]}', "ok", (21.5, 0), []),
    ("no_json_at_all", "sc", "I cannot evaluate these images.", "parse_error", None, None),
    ("empty_answer", "pq", "   ", "parse_error", None, None),
    ("gibberish_bytes", "sc", "\ufffd\x11f~|eQ{\ufffd", "parse_error", None, None),
    ("uppercase_keys", "pq", '{"Reasoning": "fine", "Score": [11, 12]}', "ok", (11, 12), []),
]


@pytest.mark.parametrize("name,call,text,status,scores,boxes", CASES, ids=[c[0] for c in CASES])
def test_golden(name, call, text, status, scores, boxes):
    parsed = parse_answer(text, call)
    assert parsed.status == status, parsed.error
    if status == "ok":
        assert parsed.error is None
        assert parsed.scores == pytest.approx(scores)
        if boxes is not None:
            assert parsed.boxes == [[float(v) for v in b] for b in boxes]
    else:
        assert parsed.error  # the reason is always stated
        assert parsed.scores is None and parsed.boxes == []


def test_regions_keep_labels_and_ids():
    parsed = parse_sc(CLEAN_SC)
    assert parsed.region_labels == ["red hat", "shadow"]
    assert parsed.region_ids == ["0", "1"]
    assert "<|bbox_1|>" in parsed.reasoning
    assert parsed.warnings == []


def test_dropped_box_is_warned_and_ids_stay_the_models():
    parsed = parse_sc(_case("degenerate_boxes_dropped"))
    assert parsed.region_ids == ["2"]  # the reasoning's <|bbox_2|> still finds its box
    assert sum("dropped" in w for w in parsed.warnings) == 2
    assert parsed.boxes_dropped == 2  # counted in the record, not only warned
    assert not any("cites" in w for w in parsed.warnings)


def test_repairs_and_clamps_are_warned():
    assert any("repaired" in w for w in parse_sc(CASES[9][2]).warnings)
    assert any("clamped" in w for w in parse_sc(_case("box_overshoot_clamped")).warnings)
    assert any("reordered" in w for w in parse_sc(_case("box_inverted")).warnings)


def test_citation_of_missing_region_is_warned():
    parsed = parse_sc('{"edit_region": [], "reasoning": "see <|bbox_0|>", "score": [5, 5]}')
    assert parsed.ok and any("bbox_0" in w for w in parsed.warnings)


def test_thin_box_threshold():
    thin = f'{{"edit_region": [[10, 10, {10 + MIN_BOX_SIDE / 2}, 500]], "reasoning": "", "score": [1, 1]}}'
    wide = f'{{"edit_region": [[10, 10, {10 + MIN_BOX_SIDE}, 500]], "reasoning": "", "score": [1, 1]}}'
    assert parse_sc(thin).boxes == []
    assert len(parse_sc(wide).boxes) == 1


def _case(name):
    return CASES[[c[0] for c in CASES].index(name)][2]


def test_truncation_error_says_so():
    parsed = parse_sc(_case("truncated_mid_object"))
    assert "truncated" in parsed.error


def test_object_with_score_wins_over_earlier_prose_object():
    obj = extract_json_object('Format: {"example": true}. Answer: {"reasoning": "r", "score": [3, 4]}')
    assert obj["score"] == [3, 4]


# ---------------------------------------------------------------------------------------------------------------
# The final answer wins (issue 12): an echoed example before the answer must not be read as the answer
# ---------------------------------------------------------------------------------------------------------------


def test_final_answer_wins_and_conflict_is_flagged():
    text = ('Example: {"score": [25, 25]}. My answer: {"reasoning": "blurry seams", "score": [5, 4]}')
    parsed = parse_pq(text)
    assert parsed.ok and parsed.scores == (5, 4) and parsed.reasoning == "blurry seams"
    assert parsed.flags == ["conflicting_answers"] and any("disagree" in w for w in parsed.warnings)
    sc = ('The format is {"edit_region": [], "reasoning": "...", "score": [25, 25]}\n'
          'Answer: {"edit_region": [[100, 100, 300, 300]], "reasoning": "<|bbox_0|>", "score": [12, 20]}')
    parsed = parse_sc(sc)
    assert parsed.scores == (12, 20) and parsed.boxes == [[100, 100, 300, 300]]
    assert "conflicting_answers" in parsed.flags


def test_repeated_identical_answers_are_not_a_conflict():
    answer = '{"reasoning": "fine", "score": [20, 21]}'
    parsed = parse_pq(answer + "\nTo repeat: " + answer)
    assert parsed.ok and parsed.scores == (20, 21) and parsed.flags == []


def test_unreadable_last_candidate_does_not_hide_a_readable_answer():
    parsed = parse_pq('{"reasoning": "r", "score": [20, 21]} P.S. {"score": "excellent"}')
    assert parsed.ok and parsed.scores == (20, 21) and parsed.flags == []
    assert any("could not be read" in w for w in parsed.warnings)


def test_example_then_truncated_answer_is_a_parse_error_not_the_example():
    parsed = parse_pq('Example: {"score": [25, 25]}. My answer: {"reasoning": "the seams are vis')
    assert parsed.status == "parse_error" and "truncated" in parsed.error and parsed.scores is None


def test_score_object_inside_the_answers_strings_is_not_an_answer():
    text = '{"reasoning": "the prompt showed {\\"score\\": [0, 0]} as a format", "score": [18, 19]}'
    parsed = parse_pq(text)
    assert parsed.ok and parsed.scores == (18, 19) and parsed.flags == []


# ---------------------------------------------------------------------------------------------------------------
# Dropped boxes (issue 12): counted, and "all dropped but edited" is not ok
# ---------------------------------------------------------------------------------------------------------------


def test_all_boxes_dropped_while_scores_say_edited_is_a_parse_error():
    text = '{"edit_region": [[100, 100, 100.5, 900], [400, 20, 900, 20]], "reasoning": "", "score": [18, 20]}'
    parsed = parse_sc(text)
    assert parsed.status == "parse_error" and parsed.boxes == [] and parsed.scores is None
    assert "all 2 boxes were dropped" in parsed.error and "edit happened" in parsed.error


def test_all_boxes_dropped_with_no_op_scores_stays_ok_and_counts_them():
    parsed = parse_sc('{"edit_region": [[5, 5, 5, 5]], "reasoning": "identical", "score": [0, 25]}')
    assert parsed.ok and parsed.boxes == [] and parsed.boxes_dropped == 1


def test_models_own_empty_region_list_stays_ok():
    parsed = parse_sc('{"edit_region": [], "reasoning": "cannot localise", "score": [15, 20]}')
    assert parsed.ok and parsed.boxes == [] and parsed.boxes_dropped == 0


# ---------------------------------------------------------------------------------------------------------------
# Pixel boxes and other score scales (issue 12): converted with a flag, or refused
# ---------------------------------------------------------------------------------------------------------------


def test_pixel_boxes_are_converted_with_the_image_size_and_flagged():
    text = '{"edit_region": [[120, 60, 1080, 720]], "reasoning": "", "score": [10, 10]}'
    parsed = parse_sc(text, image_size=(1200, 800))
    assert parsed.ok and parsed.flags == ["boxes_from_pixels"]
    assert parsed.boxes == [pytest.approx([100, 75, 900, 900])]
    refused = parse_sc(text)  # same answer, image size unknown: 1080 cannot be 0–1000
    assert refused.status == "parse_error" and "frame is unknown" in refused.error
    too_big = parse_sc(text, image_size=(800, 600))  # beyond 0–1000 and beyond the image
    assert too_big.status == "parse_error" and "800×600" in too_big.error


def test_boxes_within_0_1000_are_not_taken_for_pixels():
    parsed = parse_sc('{"edit_region": [[100, 100, 900, 900]], "reasoning": "", "score": [10, 10]}',
                      image_size=(2000, 2000))
    assert parsed.boxes == [[100, 100, 900, 900]] and parsed.flags == []


def test_prompt_score_range_10_is_converted_and_flagged():
    parsed = parse_pq('{"reasoning": "", "score": [8, 10]}', score_range=10)
    assert parsed.ok and parsed.scores == (20, 25) and parsed.flags == ["scores_rescaled"]
    over = parse_pq('{"reasoning": "", "score": [8, 11]}', score_range=10)
    assert over.status == "parse_error" and "outside 0–10" in over.error


def test_explicit_denominator_is_converted_or_refused():
    parsed = parse_pq('{"reasoning": "", "score": ["8/10", "20/25"]}')
    assert parsed.scores == (20, 20) and parsed.flags == ["scores_rescaled"]
    assert parse_pq('{"reasoning": "", "score": ["12/10", 20]}').status == "parse_error"
    assert parse_pq('{"reasoning": "", "score": ["20/25", 20]}').flags == []  # 0–25 needs no conversion


def test_every_flag_is_documented():
    texts = [
        ('Ex {"score": [1, 1]} ans {"score": [2, 2]}', "pq", {}),
        ('{"edit_region": [[0, 0, 1500, 900]], "score": [3, 3]}', "sc", {"image_size": (1600, 1000)}),
        ('{"score": [3, 3]}', "pq", {"score_range": 5}),
    ]
    seen = {f for text, call, options in texts for f in parse_answer(text, call, **options).flags}
    assert seen == set(FLAGS)
    assert all(max(parse_answer(t, c, **o).scores) <= SCORE_MAX for t, c, o in texts)


def test_no_midpoint_default_anywhere():
    """An unreadable score never becomes 12.5 (the upstream scorer's fill value)."""
    for _, call, text, status, _, _ in CASES:
        parsed = parse_answer(text, call)
        if status != "ok":
            assert parsed.scores is None


def test_pq_helper_matches_generic():
    text = '{"reasoning": "fine", "score": [10, 11]}'
    assert parse_pq(text) == parse_answer(text, "pq")


def test_brace_heavy_garbage_is_bounded():
    parsed = parse_pq("{" * 5000 + "}" * 4999)
    assert parsed.status == "parse_error"
