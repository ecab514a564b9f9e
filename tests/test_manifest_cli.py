"""`distinit datasets` and `distinit manifest` through click's test runner."""

from __future__ import annotations

import hashlib
import json

from click.testing import CliRunner

from dataset_fixtures import make_hmdb51, make_kinetics
from distinit.pipeline.cli import main


def test_datasets_lists_every_adapter():
    result = CliRunner().invoke(main, ["datasets"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == ["demo", "folder", "hmdb51", "kinetics", "ucf101"]


def test_manifest_writes_jsonl_and_prints_its_sha256(tmp_path):
    layout = make_hmdb51(tmp_path)
    out = tmp_path / "out" / "hmdb51.jsonl"
    arguments = ["manifest", "--data", "hmdb51", "--root", str(layout.root), "--splits", str(layout.splits_dir)]
    result = CliRunner().invoke(main, arguments + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == sorted(layout.expected)
    assert rows[0]["path"] == "brush_hair/Clip_00_brush_hair_u_nm_np1_fr_med_0.avi"
    assert rows[0]["splits"] == layout.expected[rows[0]["id"]][2]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.output.splitlines() == [f"18 videos (0 missing) -> {out}", f"sha256 {digest}"]
    assert (tmp_path / "out" / "hmdb51.jsonl.sha256").read_text() == f"{digest}  hmdb51.jsonl\n"


def test_manifest_reports_missing_kinetics_clips(tmp_path):
    layout = make_kinetics(tmp_path, "label")
    out = tmp_path / "kinetics.jsonl"
    result = CliRunner().invoke(main, ["manifest", "--data", "kinetics", "--root", str(layout.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"8 videos (2 missing) -> {out}"
    assert len(out.read_text().splitlines()) == 8


def single_line_error(result) -> str:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_manifest_unknown_dataset_is_a_one_line_error(tmp_path):
    arguments = ["manifest", "--data", "hmdb", "--root", str(tmp_path), "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(main, arguments)
    line = single_line_error(result)
    assert "unknown dataset 'hmdb'; known: demo, folder, hmdb51, kinetics, ucf101" in line
    assert not (tmp_path / "m").exists()


def test_manifest_layout_errors_are_one_line(tmp_path):
    layout = make_hmdb51(tmp_path)
    (layout.root / "cartwheel" / "Clip_00_cartwheel_u_nm_np1_fr_med_0.avi").unlink()
    arguments = ["manifest", "--data", "hmdb51", "--root", str(layout.root), "--out", str(tmp_path / "m.jsonl")]
    line = single_line_error(CliRunner().invoke(main, arguments))
    assert "cartwheel_test_split1.txt:1: video" in line
    line = single_line_error(CliRunner().invoke(main, arguments + ["--annotations", str(tmp_path)]))
    assert "does not take --annotations" in line
