"""Golden tests of the answer parser on a corpus of realistic VLM outputs we wrote (one case per failure mode)."""

from __future__ import annotations

import pytest

from spatialreward.teacher.parsing import MIN_BOX_SIDE, extract_json_object, parse_answer, parse_pq, parse_sc

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
    ("box_out_of_range", "sc",
     '{"edit_region": [{"id": 0, "label": "car", "bbox_2d": [-20, 500, 1100, 1030]}], "reasoning": "", '
     '"score": [10, 10]}', "ok", (10, 10), [[0, 500, 1000, 1000]]),
    ("box_inverted", "sc",
     '{"edit_region": [{"id": 0, "label": "lamp", "bbox_2d": [700, 650, 300, 250]}], "reasoning": "", '
     '"score": [14, 16]}', "ok", (14, 16), [[300, 250, 700, 650]]),
    ("degenerate_boxes_dropped", "sc",
     '{"edit_region": [{"id": 0, "label": "line", "bbox_2d": [100, 100, 100, 900]}, '
     '{"id": 1, "label": "off image", "bbox_2d": [1200, 1300, 1500, 1600]}, '
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
    text = CASES[[c[0] for c in CASES].index("degenerate_boxes_dropped")][2]
    parsed = parse_sc(text)
    assert parsed.region_ids == ["2"]  # the reasoning's <|bbox_2|> still finds its box
    assert sum("dropped" in w for w in parsed.warnings) == 2
    assert not any("cites" in w for w in parsed.warnings)


def test_repairs_and_clamps_are_warned():
    assert any("repaired" in w for w in parse_sc(CASES[9][2]).warnings)
    assert any("clamped" in w for w in parse_sc(CASES[14][2]).warnings)
    assert any("reordered" in w for w in parse_sc(CASES[15][2]).warnings)


def test_citation_of_missing_region_is_warned():
    parsed = parse_sc('{"edit_region": [], "reasoning": "see <|bbox_0|>", "score": [5, 5]}')
    assert parsed.ok and any("bbox_0" in w for w in parsed.warnings)


def test_thin_box_threshold():
    thin = f'{{"edit_region": [[10, 10, {10 + MIN_BOX_SIDE / 2}, 500]], "reasoning": "", "score": [1, 1]}}'
    wide = f'{{"edit_region": [[10, 10, {10 + MIN_BOX_SIDE}, 500]], "reasoning": "", "score": [1, 1]}}'
    assert parse_sc(thin).boxes == []
    assert len(parse_sc(wide).boxes) == 1


def test_truncation_error_says_so():
    parsed = parse_sc(CASES[8][2])
    assert "truncated" in parsed.error


def test_first_object_with_score_wins_over_earlier_prose_object():
    obj = extract_json_object('Format: {"example": true}. Answer: {"reasoning": "r", "score": [3, 4]}')
    assert obj["score"] == [3, 4]


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
