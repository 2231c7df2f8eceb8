import dataclasses
import json
import math

import msgpack
import pytest

from shotnet.sensor.contract import (PROTOCOL, ContractError, Detection, Ellipse, Event, decode,
                                     decode_detection, detection_from_dict, detection_from_json,
                                     detection_to_json, encode_detection, event_from_dict)

GOOD = {"sensor_id": "S01", "seq": 7, "t_ns": 1_800_000_000_123_456_789, "t_sigma_ns": 50_000,
        "label": "gunshot", "score": 0.93}


def test_json_round_trip_keeps_every_field():
    d = detection_from_dict(dict(GOOD, clock_source="gps", clock_locked=True, snr_db=31.5, lat=41.8, lon=-87.6))
    assert detection_from_json(detection_to_json(d)) == d
    assert d.p_gunshot == 0.93  # defaults to score for a gunshot label


def test_msgpack_round_trip_with_clip():
    d = detection_from_dict(dict(GOOD, clip=b"\x00\x3c" * 10, clip_fs_hz=16000))
    assert decode_detection(encode_detection(d)) == d


def test_t_ns_survives_json_exactly():
    # integer nanoseconds; a float epoch would lose the last digits
    d = detection_from_json(json.dumps(GOOD))
    assert d.t_ns == 1_800_000_000_123_456_789


@pytest.mark.parametrize("patch, message", [
    ({"t_sec": 1.0}, "unknown key(s): t_sec"),
    ({"seq": None}, "seq must be an integer"),
    ({"seq": True}, "seq must be an integer"),
    ({"t_ns": 1.8e18}, "t_ns must be an integer"),
    ({"t_ns": 5}, "t_ns=5 outside"),
    ({"score": float("nan")}, "score must be finite"),
    ({"score": 1.5}, "score=1.5 outside"),
    ({"sensor_id": ""}, "sensor_id must match"),
    ({"label": "Gun Shot"}, "label must match"),
    ({"clock_source": "sundial"}, "clock_source must be one of"),
])
def test_malformed_detections_are_rejected_with_a_clear_message(patch, message):
    with pytest.raises(ContractError) as exc:
        detection_from_dict(dict(GOOD, **patch))
    assert message in str(exc.value)


def test_missing_keys_are_named():
    d = dict(GOOD)
    del d["t_sigma_ns"], d["label"]
    with pytest.raises(ContractError, match="missing key"):
        detection_from_dict(d)


@pytest.mark.parametrize("frames, message", [
    ([PROTOCOL, b"det"], "expected 3 frames"),
    ([b"other/9", b"det", msgpack.packb(GOOD)], "unknown protocol"),
    ([PROTOCOL, b"zzz", msgpack.packb(GOOD)], "unknown message kind"),
    ([PROTOCOL, b"det", b"\xc1\xc1"], "not msgpack"),
    ([PROTOCOL, b"det", msgpack.packb([1, 2])], "must be a map"),
    ([PROTOCOL, b"det", b"x" * (2 << 20)], "exceeds"),
])
def test_bad_frames(frames, message):
    with pytest.raises(ContractError, match=message):
        decode(frames)


def test_not_json_line():
    with pytest.raises(ContractError, match="not JSON"):
        detection_from_json("{oops")


def test_event_round_trip():
    ev = Event("abc", 1_800_000_000_000_000_000, 41.8, -87.6, 181.5, Ellipse(3.0, 1.0, 45.0), ("S01", "S02"),
               0.3, "gunshot", 0.9, "inc-abc", ("S01:1", "S02:4"))
    back = event_from_dict(json.loads(ev.to_json()))
    assert back == ev
    assert math.isclose(back.ellipse95_m.major, 3.0)
    with pytest.raises(ContractError, match="unknown key"):
        event_from_dict(dict(json.loads(ev.to_json()), bogus=1))


def test_event_to_dict_is_asdict_with_lists():
    # to_dict is written out for speed; it must stay what dataclasses.asdict gives
    # (every field, in order), with the tuples as lists.
    ev = Event("abc", 1_800_000_000_000_000_000, 41.8, -87.6, 181.5, Ellipse(3.0, 1.0, 45.0), ("S01", "S02"),
               0.3, "aerial", 0.9, "inc-abc", ("S01:1", "S02:4"), x_m=1.5, y_m=-2.5, t_sigma_ms=0.7, version=3,
               test=True)
    want = dataclasses.asdict(ev)
    want["sensor_ids"], want["detections"] = list(ev.sensor_ids), list(ev.detections)
    assert ev.to_dict() == want and list(ev.to_dict()) == list(want)


def test_detection_is_frozen():
    d = detection_from_dict(GOOD)
    with pytest.raises(Exception):
        d.seq = 3  # type: ignore[misc]
    assert isinstance(d, Detection) and d.key == "S01:7"
