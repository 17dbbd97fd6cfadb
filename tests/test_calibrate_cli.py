"""`python -m engine calibrate`: the JSON array (order, fields, atomic output), errors and the jsonl protocol."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from test_calibrate_vp import CENTRE, draw, rotation

FIELDS = {"image", "width", "height", "model", "params", "hfov_deg", "vfov_deg", "method", "confidence", "reason"}


def _engine(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _inputs(tmp_path):
    room = tmp_path / "room.png"
    Image.fromarray(draw(rotation(30.0, -10.0, 0.0), CENTRE, 420.0, 640, 480)).save(room)
    tagged = tmp_path / "tagged.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 50
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(tagged, exif=exif.tobytes())
    plain = tmp_path / "plain.png"
    blobs = cv2.GaussianBlur((np.random.default_rng(1).random((120, 160, 3)) * 255).astype(np.uint8), (0, 0), 8)
    Image.fromarray(blobs).save(plain)
    return room, tagged, plain


def test_json_array_in_input_order(tmp_path):
    room, tagged, plain = _inputs(tmp_path)
    out = tmp_path / "out" / "calib.json"
    proc = _engine("--progress", "none", "calibrate", room, tagged, plain, "--json", out)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert [r["image"] for r in results] == [str(room), str(tagged), str(plain)]
    assert [r["method"] for r in results] == ["vp", "exif", "prior"]
    for r in results:
        assert FIELDS <= r.keys() and 0 <= r["confidence"] <= 1 and r["model"] == "SIMPLE_PINHOLE"
        f, cx, cy = r["params"]
        assert r["hfov_deg"] == pytest.approx(math.degrees(math.atan(cx / f) + math.atan((r["width"] - cx) / f)))
    assert results[0]["hfov_deg"] == pytest.approx(math.degrees(2 * math.atan(320 / 420.0)), abs=0.5)
    assert np.asarray(results[0]["cam_from_world"]).shape == (4, 4)
    assert "cam_from_world" not in results[1] and "cam_from_world" not in results[2]
    assert (results[1]["width"], results[1]["height"]) == (400, 300)
    assert results[1]["params"][0] == pytest.approx(50 / 43.27 * 500)
    assert results[2]["confidence"] <= 0.05 and "prior" in results[2]["reason"]
    assert not [p for p in out.parent.iterdir() if p.name != "calib.json"]  # no staging files left


def test_failure_names_the_image_and_writes_nothing(tmp_path):
    room, tagged, plain = _inputs(tmp_path)
    out = tmp_path / "calib.json"
    proc = _engine("calibrate", tagged, plain, "--method", "exif", "--json", out)
    assert proc.returncode == 2
    assert "plain.png" in proc.stderr and "EXIF gives no focal length" in proc.stderr
    assert not out.exists()
    proc = _engine("--progress", "jsonl", "calibrate", tmp_path / "missing.jpg")
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 2 and event["event"] == "error"
    assert "missing.jpg: image file not found" in event["message"]


def test_jsonl_result_event_carries_the_array(tmp_path):
    room, _, _ = _inputs(tmp_path)
    proc = _engine("--progress", "jsonl", "calibrate", room, "--method", "vp")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert events[-1]["event"] == "result"
    (only,) = events[-1]["result"]["results"]
    assert only["method"] == "vp" and only["image"] == str(room) and events[-1]["result"]["json"] is None
