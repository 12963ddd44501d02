"""Dataset writer and loaders: round trip, splits by world seed, resume."""

import json

import numpy as np
import pytest

from mirage_ros.camera import PinholeCamera
from mirage_ros.worlds import generate_world
from mirage_ros.worlds.dataset import FrameDataset, SequenceDataset, seeds_for, split_of, write_dataset
from mirage_ros.worlds.renderer import GroundTruthRenderer


def test_splits_are_disjoint_functions_of_the_seed():
    train, val, test = (set(seeds_for(s, 20)) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert all(split_of(s) == "test" for s in test)


def test_round_trip_equals_what_was_rendered(tmp_path):
    folder = write_dataset(tmp_path, "val", worlds=1, sequences_per_world=2, frames=6, width=32, height=24,
                           workers=1, progress=False)
    sequences = SequenceDataset(tmp_path, "val")
    assert len(sequences) == 2
    item = sequences[0]
    assert item["rgb"].shape == (6, 24, 32, 3) and item["depth"].shape == (6, 24, 32)
    camera = PinholeCamera.from_matrix(item["K"].numpy(), 32, 24)
    with GroundTruthRenderer(generate_world(item["world_seed"]), 32, 24) as renderer:
        for t in (0, 5):
            rgb, depth = renderer.render(item["cam_to_world"][t].numpy(), camera.K)
            np.testing.assert_array_equal(item["rgb"][t].numpy(), rgb)
            np.testing.assert_array_equal(item["depth"][t].numpy(), depth)
    assert len(FrameDataset(sequences)) == 12

    # Resume: a second run renders nothing new and leaves the files untouched.
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}
    write_dataset(tmp_path, "val", worlds=1, sequences_per_world=2, frames=6, width=32, height=24, workers=1,
                  progress=False)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}


def test_loader_refuses_other_splits_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        SequenceDataset(tmp_path, "train")
    write_dataset(tmp_path, "test", worlds=1, sequences_per_world=1, frames=3, width=16, height=16, workers=1,
                  progress=False)
    index_path = tmp_path / "test" / "index.json"
    index = json.loads(index_path.read_text())
    index["sequences"][0]["world_seed"] = 1  # a training world smuggled into the test split
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="does not belong to split test"):
        SequenceDataset(tmp_path, "test")
    with pytest.raises(ValueError, match="other settings"):
        write_dataset(tmp_path, "test", worlds=1, sequences_per_world=1, frames=4, width=16, height=16, workers=1,
                      progress=False)
