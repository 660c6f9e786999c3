"""`bus-paper bench` on the smoke profile: the JSON has the promised keys and sane values."""

import json

from bus_paper.cli import main


def test_bench_json_keys(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--profile", "smoke", "--steps", "1", "--ref-workers", "0",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("ours_img_s", "reference_img_s", "speedup", "peak_fraction", "matmul_peak_gflop_s"):
        assert res[key] > 0, key
    assert res["speedup"] == res["ours_img_s"] / res["reference_img_s"]
    # achieved GFLOP/s can never exceed what the hardware's matmul peak allows by much
    assert res["peak_fraction"] < 1.5
    # per-stage times of the encoder (S0 stem .. S4), forward and backward, both positive
    assert list(res["stages"]) == ["S0", "S1", "S2", "S3", "S4"]
    assert all(t["forward_s"] > 0 and t["backward_s"] > 0 for t in res["stages"].values())
    # a step without S0-S1 can only be faster
    assert res["speedup_without_s0_s1"] > res["speedup"]
    assert res["provenance"]["profile"] == "smoke" and "git" in res["provenance"]
