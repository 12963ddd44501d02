"""The evaluation CLI on a tiny random checkpoint: every variant is measured and reported."""

import json

import numpy as np
import pytest

from mirage_ros.training import evaluate


def test_evaluation_writes_report_metrics_and_plots(tiny_checkpoint, tmp_path):
    output = tmp_path / "report"
    assert evaluate.main(["--checkpoint", str(tiny_checkpoint), "--output", str(output), "--worlds", "1",
                          "--frames", "8", "--long-frames", "24"]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == set(evaluate.VARIANTS) | {"autoencoder", "truth", "replay", "long_rollouts"}
    # Replay of a mapped place from another route, latent and explicit memory side by side.
    for variant in evaluate.REPLAY_VARIANTS:
        replayed = metrics["replay"][variant]
        # The other route passes through the mapped room: every frame is scored on pixels mapping saw.
        assert replayed["frames"] == evaluate.REPLAY_FRAMES
        assert replayed["seen_psnr_db"] > 0 and 0 < replayed["seen_depth_absrel"] < 10
        # The route looks at the floor: the split scores it, and the floor is a share of the seen pixels.
        assert 0 < replayed["floor_frames"] <= replayed["frames"] and replayed["other_frames"] <= replayed["frames"]
        assert 0.0 < replayed["floor_share_of_seen"] < 1.0 and replayed["seen_floor_psnr_db"] > 0
    assert "seen floor PSNR" in (output / "report.md").read_text()
    assert "| latent |" in (output / "report.md").read_text().split("Replay")[1]
    # Long rollouts: realism two-sample accuracies are accuracies, and consistency is measured for both.
    long = metrics["long_rollouts"]
    assert long["frames"] == 2 * 23
    for name in ("realism_accuracy", "realism_accuracy_last_third", "reference_accuracy_autoencoder"):
        assert 0.0 <= long[name] <= 1.0
    assert long["truth_reprojection_psnr_db"] > long["reprojection_psnr_db"] > 0  # an untrained model is worse
    # The test worlds' free-space drives keep the true camera out of walls; the figure is a share of frames.
    assert long["truth_inside_surface_share"] == 0.0 and 0.0 <= long["inside_surface_share"] <= 1.0
    assert "camera inside a surface" in (output / "report.md").read_text()
    # True rooms have obstacle borders, but on few pixel pairs; an untrained model's depth has more.
    assert 0.0 < long["truth_depth_step_share"] < 0.05 and long["depth_step_share"] > long["truth_depth_step_share"]
    assert "obstacle borders" in (output / "report.md").read_text()
    # Fog: contrast against the truth's, over the drives and for the worst of them (an untrained model's frames
    # are noise, not fog: any positive ratio).
    lowest = long["contrast_ratio_lowest_drive"]
    assert 0.0 < lowest["ratio"] <= long["contrast_ratio_after_first_third"] < 100.0
    assert lowest["kind"] in evaluate.LONG_KINDS and "luminance contrast" in (output / "report.md").read_text()
    for variant in evaluate.VARIANTS:
        timings = metrics[variant]["step_ms_median"]
        assert timings["total"] > 0 and set(timings) == {"read", "denoise", "decode", "write", "total"}
        # The out-and-back trajectory returns through the outgoing poses: loop closure is measured.
        assert metrics[variant]["loop_closure_psnr_db"] is not None
    assert metrics["none"]["covered_frames"] == 0  # without memory no view is covered
    assert metrics["latent"]["observed_frames"] > 0  # the start view is seen again on the way back
    assert 0 < metrics["autoencoder"]["reconstruction_depth_absrel"] < 10
    # Depth geometry, with the ground truth beside it: no grid imprint and nothing below the floor there;
    # the floor constraint keeps even an untrained model's depth above the floor.
    assert 0.5 < metrics["truth"]["seam_ratio_depth"] < 1.5 and metrics["truth"]["below_floor_share"] == 0.0
    assert metrics["latent"]["below_floor_share"] == 0.0 and metrics["latent"]["seam_ratio_depth"] > 0
    report = (output / "report.md").read_text()
    assert all(f"| {variant} |" in report for variant in (*evaluate.VARIANTS, "truth"))
    assert (output / "loop_closure.png").stat().st_size > 0 and (output / "examples.png").stat().st_size > 0
    assert (output / "replay.png").stat().st_size > 0


def test_seen_scores_split_the_seen_pixels_into_floor_and_rest():
    """A frame right on the floor and wrong elsewhere scores the floor perfectly and the rest not; the
    floor's share counts seen pixels only, and a part under ``REPLAY_PART_SHARE`` of the view is not scored."""
    truth_rgb, truth_depth = np.full((16, 16, 3), 100, np.uint8), np.ones((16, 16), np.float32)
    out_rgb = truth_rgb.copy()
    out_rgb[:8] = 140  # wrong in the top half, which is not floor
    floor = np.zeros((16, 16), bool)
    floor[8:] = True
    seen = np.ones((16, 16), bool)
    seen[:4] = False
    scores = evaluate.seen_scores([out_rgb], [truth_depth], [(truth_rgb, truth_depth)], [seen], [floor])
    assert scores["floor_psnr"] == [float("inf")] and 0 < scores["other_psnr"][0] < 30
    assert scores["floor_share"] == [pytest.approx(128 / 192)]
    tiny_floor = np.zeros((16, 16), bool)
    tiny_floor[15, :4] = True  # 4 of 256 pixels: under 5 % of the view
    scores = evaluate.seen_scores([out_rgb], [truth_depth], [(truth_rgb, truth_depth)], [seen], [tiny_floor])
    assert scores["floor_psnr"] == [] and len(scores["psnr"]) == len(scores["other_psnr"]) == 1
    # Without floor masks, only the whole-seen scores (as the rollout tests use it).
    assert set(evaluate.seen_scores([out_rgb], [truth_depth], [(truth_rgb, truth_depth)], [seen])) == {"psnr", "absrel"}
