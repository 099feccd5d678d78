"""Box utilities: 0–1000 ↔ pixels, boxes → mask → boxes round trips at several resolutions, IoU."""

import numpy as np
import pytest

from spatialreward.boxes import (
    box_iou,
    boxes_to_mask,
    mask_iou,
    mask_to_boxes,
    normalized_to_pixels,
    pixels_to_normalized,
)


def test_normalized_pixel_round_trip():
    boxes = np.array([[100, 200, 300, 400], [0, 0, 1000, 1000]], dtype=float)
    px = normalized_to_pixels(boxes, height=50, width=200)
    np.testing.assert_allclose(px[0], [20, 10, 60, 20])
    np.testing.assert_allclose(pixels_to_normalized(px, 50, 200), boxes)


@pytest.mark.parametrize("h,w", [(14, 14), (64, 48), (224, 224), (333, 500)])
def test_boxes_mask_boxes_round_trip(h, w):
    # Boxes on a 1000/16-grid land exactly on pixel edges only at some sizes; the round trip must hold to a pixel.
    boxes = np.array([[100, 150, 450, 600], [600, 700, 900, 950]], dtype=float)
    mask = boxes_to_mask(boxes, h, w)
    back = mask_to_boxes(mask)
    assert back.shape == (2, 4)
    # Largest first: the first box is the bigger one.
    tol = np.array([1000 / w, 1000 / h, 1000 / w, 1000 / h]) + 1e-9
    order = np.argsort([-(b[2] - b[0]) * (b[3] - b[1]) for b in boxes])
    assert np.all(np.abs(back - boxes[order]) <= tol)


def test_mask_round_trip_is_exact_for_pixel_aligned_boxes():
    mask = np.zeros((40, 60), bool)
    mask[5:15, 10:30] = True
    mask[25:38, 40:58] = True
    again = boxes_to_mask(mask_to_boxes(mask), 40, 60)
    np.testing.assert_array_equal(again, mask)


def test_empty_boxes_and_masks():
    assert not boxes_to_mask([], 10, 10).any()
    assert mask_to_boxes(np.zeros((10, 10), bool)).shape == (0, 4)
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def test_min_area_and_max_boxes():
    mask = np.zeros((20, 20), bool)
    mask[0:10, 0:10] = True  # area 100
    mask[15, 15] = True  # area 1: noise
    mask[12:14, 0:3] = True  # area 6
    assert len(mask_to_boxes(mask)) == 3
    assert len(mask_to_boxes(mask, min_area=5)) == 2
    one = mask_to_boxes(mask, max_boxes=1)
    np.testing.assert_allclose(one[0], [0, 0, 500, 500])


def test_box_iou_values():
    a = [[0, 0, 10, 10]]
    b = [[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [3, 3, 3, 8]]
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou[0], [1.0, 25 / 175, 0.0, 0.0])


def test_mask_iou_and_shape_check():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, np.zeros((3, 3)))
