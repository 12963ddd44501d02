"""Read a bag the way Foxglove does: the official MCAP reader, every message decoded from the message
definitions embedded in the file alone (no ROS installation, no rosbags type store)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory


def decode_every_message(bag: Path) -> Counter:
    """Messages per topic of the bag's single MCAP file; raises if any message does not decode."""
    files = sorted(Path(bag).glob("*.mcap"))
    assert len(files) == 1, files
    counts: Counter = Counter()
    with open(files[0], "rb") as handle:
        reader = make_reader(handle, decoder_factories=[DecoderFactory()])
        for schema, channel, _, decoded in reader.iter_decoded_messages():
            assert schema.encoding == "ros2msg" and channel.message_encoding == "cdr"
            assert decoded is not None
            counts[channel.topic] += 1
    return counts
