"""Source groups (pipeline.datasets.groups) on names as the real data sets spell them."""

from __future__ import annotations

import pytest

from distinit.pipeline.datasets.groups import source_group


@pytest.mark.parametrize(("dataset", "video_id", "group"), [
    ("ucf101", "v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup_g08"),
    ("ucf101", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c05.avi", "ApplyEyeMakeup_g08"),
    ("ucf101", "v_HandStandPushups_g01_c01", "HandStandPushups_g01"),
    # HMDB-51: the meta tags differ between clips of one source; the group is the source and the action.
    ("hmdb51", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0", "April_09_brush_hair"),
    ("hmdb51", "brush_hair/April_09_brush_hair_h_cm_np2_fr_med_2", "April_09_brush_hair"),
    ("hmdb51", "Prelinger_HabitPat1954_brush_hair_h_nm_np1_fr_med_26", "Prelinger_HabitPat1954_brush_hair"),
    ("hmdb51", "smile/Prelinger_HabitPat1954_smile_h_nm_np1_fr_goo_3", "Prelinger_HabitPat1954_smile"),
    ("hmdb51", "pan_left/chelsea_pan_left_03", "chelsea_pan_left"),  # the demo's HMDB-layout names
    ("kinetics", "abc123DEF45_000010_000020", "abc123DEF45"),
    ("kinetics", "abc_12-DEF4_000010_000020", "abc_12-DEF4"),
    ("folder", "raw/some_video_3", "some_video_3"),  # no known pattern: its own group
])
def test_source_group_of_real_names(dataset, video_id, group):
    assert source_group(dataset, video_id) == group
