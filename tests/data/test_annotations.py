"""Annotations CSV reader (issue 21): boxes and masks, errors naming file, row and column."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medtl.data.annotations import AnnotationError, read_annotations


@pytest.fixture
def films(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / name)
    return tmp_path


def _csv(folder, text):
    p = folder / "boxes.csv"
    p.write_text(text)
    return p


def test_boxes_several_per_film(films):
    ann = read_annotations(_csv(films, "file,x,y,w,h,label,patient_id\na.png,1,2,3,2,mass,P1\n"
                                       "a.png,6,0,2,1,,P1\nb.png,0,0,8,6,x,P2\n"))
    a, b = str(films / "a.png"), str(films / "b.png")
    assert ann.files() == [a, b] and ann.patients == {a: "P1", b: "P2"}
    r1, r2 = ann.regions(a, (6, 8))
    expected = np.zeros((6, 8), bool)
    expected[2:4, 1:4] = True  # x=1, y=2, w=3, h=2: columns 1-3, rows 2-3
    np.testing.assert_array_equal(r1, expected)
    assert r2.sum() == 2 and r2[0, 6] and r2[0, 7]
    assert ann.regions(b, (6, 8))[0].all()


@pytest.mark.parametrize("text, match", [
    ("file,x,y,w\na.png,1,1,1\n", r"boxes\.csv: missing column\(s\) h; an annotations CSV needs"),
    ("file,x,y,w,h\na.png,1,1,2,2\na.png,1,oops,2,2\n", r"boxes\.csv row 2, column y: 'oops' is not a number >= 0"),
    ("file,x,y,w,h\na.png,1,1,0,2\n", r"row 1, column w: '0' is not a number > 0; give the box in the film's"),
    ("file,x,y,w,h\nmissing.png,1,1,2,2\n", r"row 1, column file: .*missing\.png not found; give the film's path"),
    ("file,mask\na.png,\n", r"row 1, column mask: empty"),
])
def test_csv_errors_name_file_row_and_column(films, text, match):
    with pytest.raises(AnnotationError, match=match):
        read_annotations(_csv(films, text))


def test_box_outside_the_film_is_refused(films):
    ann = read_annotations(_csv(films, "file,x,y,w,h\na.png,5,1,4,2\n"))
    with pytest.raises(AnnotationError, match=r"row 1: box x=5, y=1, w=4, h=2 reaches outside film .*a\.png of 8x6"):
        ann.regions(str(films / "a.png"), (6, 8))


def test_masks_png_and_wrong_size(films):
    m = np.zeros((6, 8), np.uint8)
    m[1:3, 2:5] = 255
    Image.fromarray(m).save(films / "a_mask.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(films / "small.png")
    ann = read_annotations(_csv(films, "file,mask\na.png,a_mask.png\nb.png,small.png\n"))
    (region,) = ann.regions(str(films / "a.png"), (6, 8))
    np.testing.assert_array_equal(region, m > 0)
    with pytest.raises(AnnotationError, match=r"column mask: .*small\.png is 4x4 \(rows x columns\) but film "
                                              r".*b\.png is 6x8; give a mask of the film's own size"):
        ann.regions(str(films / "b.png"), (6, 8))


def test_config_annotations_resolved_and_checked(tmp_path):
    from medtl.config import ConfigError, load_config

    (tmp_path / "labels.csv").write_text("file,label\n")
    (tmp_path / "boxes.csv").write_text("file,x,y,w,h\n")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("data: {manifest: labels.csv, annotations: boxes.csv}\n")
    assert load_config(cfg_path).data.annotations == str(tmp_path / "boxes.csv")
    with pytest.raises(ConfigError, match=r"data\.annotations: .*nope\.csv not found"):
        load_config(cfg_path, overrides=["data.annotations=nope.csv"])
