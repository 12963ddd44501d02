"""Few-step training runs on a tiny generated dataset: the loss falls, checkpoints resume."""

import json

import pytest
import torch

from safetensors.torch import load_file

from mirage_ros.model import RGBDAutoencoder, load_component
from mirage_ros.training import export, train_autoencoder, train_denoiser, train_refiner
from mirage_ros.training.latents import load_sequences, weights_fingerprint
from mirage_ros.worlds.dataset import write_dataset


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_autoencoder_and_denoiser_training_reduce_the_loss_and_resume(tmp_path):
    torch.set_num_threads(2)
    write_dataset(tmp_path / "data", "train", worlds=2, sequences_per_world=1, frames=12, width=32, height=32,
                  workers=1, progress=False)
    ae = tmp_path / "ae"
    common = ["--data", str(tmp_path / "data"), "--batch-size", "8", "--log-every", "1", "--workers", "0",
              "--mixed-precision", "no"]
    train_autoencoder.main(common + ["--output", str(ae), "--steps", "30", "--save-every", "15", "--lr", "2e-3",
                                     "--latent-channels", "4", "--block-out-channels", "16", "16", "16", "16"])
    history = losses(ae)
    assert len(history) == 30 and sum(history[-5:]) / 5 < 0.8 * sum(history[:5]) / 5
    config = json.loads((ae / "checkpoint" / "config.json").read_text())
    assert config["scaling_factor"] != 1.0  # latents were calibrated after training

    dn = tmp_path / "dn"
    train_denoiser.main(common + ["--output", str(dn), "--steps", "12", "--save-every", "6", "--lr", "1e-3",
                                  "--autoencoder", str(ae / "checkpoint"), "--block-out-channels", "32", "32",
                                  "--context-degradation", "0.5", "--context-kept-contrast", "0.5", "1",
                                  "--context-blur-zoom", "1", "2"])
    history = losses(dn)
    assert len(history) == 12 and sum(history[-3:]) / 3 < sum(history[:3]) / 3
    # Asking for more steps resumes from the checkpoint instead of starting over.
    train_denoiser.main(common + ["--output", str(dn), "--steps", "14", "--save-every", "7", "--lr", "1e-3",
                                  "--autoencoder", str(ae / "checkpoint"), "--block-out-channels", "32", "32"])
    assert [json.loads(line)["step"] for line in (dn / "log.jsonl").read_text().splitlines()][-2:] == [13, 14]
    for bad in (["--context-degradation", "1.5"], ["--context-kept-contrast", "0.8", "0.5"],
                ["--context-blur-zoom", "0.5", "2"]):
        with pytest.raises(SystemExit):  # argparse's error exit: shares lie in [0, 1], ranges rise, zooms from 1
            train_denoiser.main(common + ["--output", str(tmp_path / "bad"), "--autoencoder", str(ae / "checkpoint"),
                                          *bad])
    assert not (tmp_path / "bad").exists()


def test_a_lighter_decoder_trains_onto_the_frozen_encoder_and_keeps_the_latent_space(tmp_path):
    torch.set_num_threads(2)
    write_dataset(tmp_path / "data", "train", worlds=2, sequences_per_world=1, frames=12, width=32, height=32,
                  workers=1, progress=False)
    torch.manual_seed(0)
    source = RGBDAutoencoder(latent_channels=4, block_out_channels=(16, 16, 16, 16), scaling_factor=0.7,
                             latent_shift=0.2)
    source.save_pretrained(tmp_path / "source")
    run = tmp_path / "decoder"
    common = ["--data", str(tmp_path / "data"), "--batch-size", "8", "--log-every", "1", "--workers", "0",
              "--mixed-precision", "no", "--init-from", str(tmp_path / "source"), "--decoder-only"]
    train_autoencoder.main(common + ["--output", str(run), "--steps", "20", "--save-every", "10", "--lr", "2e-3",
                                     "--decoder-layers-per-block", "0", "--ema-decay", "0", "--flat-walls", "0.2"])
    history = losses(run)
    assert len(history) == 20 and sum(history[-5:]) / 5 < sum(history[:5]) / 5
    trained = load_component(RGBDAutoencoder, run / "checkpoint")
    assert trained.config.decoder_layers_per_block == 0
    assert [len(block.resnets) for block in trained.vae.decoder.up_blocks] == [1, 1, 1, 1]
    assert [len(block.resnets) for block in source.vae.decoder.up_blocks] == [2, 2, 2, 2]
    # The latent space is the source's: same encoder weights, same statistics, the same latents.
    assert (trained.config.latent_shift, trained.config.scaling_factor) == (0.2, 0.7)
    before, after = source.state_dict(), trained.state_dict()
    encoder = [name for name in before if not name.startswith(("vae.decoder.", "vae.post_quant_conv."))]
    assert encoder and all(torch.equal(before[name], after[name]) for name in encoder)
    assert not torch.equal(before["vae.decoder.conv_out.weight"], after["vae.decoder.conv_out.weight"])
    rgb, depth = torch.rand(1, 3, 32, 32), torch.rand(1, 32, 32) * 5 + 0.5
    with torch.no_grad():
        assert torch.equal(source.encode(rgb, depth), trained.encode(rgb, depth))
        assert trained.decode(trained.encode(rgb, depth))[0].shape == (1, 3, 32, 32)
    with pytest.raises(SystemExit):  # a decoder alone needs an encoder to train onto
        train_autoencoder.main(["--data", str(tmp_path / "data"), "--output", str(tmp_path / "bad"), "--decoder-only"])
    with pytest.raises(SystemExit):
        train_autoencoder.main(common + ["--output", str(tmp_path / "bad"), "--decoder-layers-per-block", "-1"])
    with pytest.raises(SystemExit):
        train_autoencoder.main(common + ["--output", str(tmp_path / "bad"), "--flat-walls", "1.5"])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="decoder_layers_per_block"):
        RGBDAutoencoder(decoder_layers_per_block=-1)


def test_flat_walls_replace_the_share_of_samples_asked_for_with_one_colour_at_one_distance():
    torch.manual_seed(0)
    rgb, depth = torch.rand(400, 3, 8, 8), torch.rand(400, 8, 8) * 3 + 0.5
    original_rgb, original_depth = rgb.clone(), depth.clone()
    train_autoencoder.replace_with_flat_walls(rgb, depth, 0.25)
    flat = (rgb.flatten(2).std(-1).amax(-1) == 0) & (depth.flatten(1).std(-1) == 0)
    assert 0.18 < float(flat.float().mean()) < 0.32
    assert torch.equal(rgb[~flat], original_rgb[~flat]) and torch.equal(depth[~flat], original_depth[~flat])
    assert float(depth[flat].min()) >= 0.5 and float(depth[flat].max()) <= 10.0
    assert len({tuple(sample[:, 0, 0].tolist()) for sample in rgb[flat]}) == int(flat.sum())  # a colour each
    train_autoencoder.replace_with_flat_walls(rgb, depth, 0.0)
    assert not (depth.flatten(1).std(-1) == 0).logical_xor(flat).any()


def test_accelerate_launch_with_two_processes_writes_one_log_and_one_checkpoint(tmp_path):
    """``accelerate launch --num_processes 2 --cpu``: both processes train (gradients averaged), only
    the main one writes the log and checkpoints, and the run resumes like a single-process one."""
    import subprocess
    import sys
    from pathlib import Path

    from mirage_ros.model import MemoryConditionedDenoiser

    write_dataset(tmp_path / "data", "train", worlds=1, sequences_per_world=1, frames=8, width=32, height=32,
                  workers=1, progress=False)
    common = ["--data", str(tmp_path / "data"), "--batch-size", "4", "--log-every", "1", "--workers", "0",
              "--mixed-precision", "no"]
    ae = tmp_path / "ae"
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "2", "--num_machines",
              "1", "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    for module, extra, run in (
            ("mirage_ros.training.train_autoencoder", ["--latent-channels", "4", "--block-out-channels", "16", "16",
                                                       "16", "16", "--crop-size", "0"], ae),
            ("mirage_ros.training.train_denoiser", ["--autoencoder", str(ae / "checkpoint"),
                                                    "--block-out-channels", "32", "32"], tmp_path / "dn")):
        result = subprocess.run(launch + [module, *common, *extra, "--output", str(run), "--steps", "4",
                                          "--save-every", "2"],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4]  # one writer: no line twice
        assert not list(run.glob("checkpoint.*"))  # no staging folder left by a second writer
    denoiser = load_component(MemoryConditionedDenoiser, tmp_path / "dn" / "checkpoint")
    assert all(torch.isfinite(p).all() for p in denoiser.parameters())
    assert json.loads((tmp_path / "dn" / "memory.json").read_text())["patch_size"] == 8


def test_training_on_own_rollouts_with_ema_from_shipped_weights_exports_the_average(tmp_path, tiny_checkpoint):
    """``--rollouts-from``: the world model drives every training sequence from its first frame and the
    examples mix its generated frames in; ``--init-from`` starts from given weights; the run keeps a
    moving average (``checkpoint/ema``), and ``mirage-export`` ships that average."""
    torch.set_num_threads(2)
    write_dataset(tmp_path / "data", "train", worlds=1, sequences_per_world=2, frames=8, width=64, height=64,
                  workers=1, progress=False)
    dn = tmp_path / "dn"
    arguments = ["--data", str(tmp_path / "data"), "--batch-size", "4", "--log-every", "1", "--workers", "0",
                 "--mixed-precision", "no", "--output", str(dn), "--steps", "6", "--save-every", "3", "--lr", "1e-3",
                 "--autoencoder", str(tiny_checkpoint / "autoencoder"), "--block-out-channels", "32", "32",
                 "--rollouts-from", str(tiny_checkpoint), "--init-from", str(tiny_checkpoint / "denoiser"),
                 "--ema-decay", "0.9"]
    train_denoiser.main(arguments)
    rollouts = load_sequences(dn / "rollouts.safetensors", {"split": "train"})
    truth = load_sequences(dn / "latents.safetensors", {"split": "train"})
    assert len(rollouts) == 2 and all(r.shape == t.shape == (8, 4, 8, 8) for r, t in zip(rollouts.latents, truth.latents))
    # The true start, encoded as the simulator encodes it (``auto``: in bfloat16 where the CPU has it natively).
    assert torch.allclose(rollouts.latents[0][0].float(), truth.latents[0][0].float(), atol=5e-2)
    assert not torch.allclose(rollouts.latents[0][1:].float(), truth.latents[0][1:].float(), atol=1e-2)  # generated
    assert len(losses(dn)) == 6

    raw = load_file(dn / "checkpoint" / "diffusion_pytorch_model.safetensors")
    average = load_file(dn / "checkpoint" / "ema" / "diffusion_pytorch_model.safetensors")
    start = load_file(tiny_checkpoint / "denoiser" / "diffusion_pytorch_model.safetensors")
    name = next(key for key in raw if key.endswith("conv_in.weight"))
    assert not torch.equal(raw[name], average[name]) and not torch.equal(raw[name], start[name].float())
    # The average lies between where training started and where it ended.
    assert (average[name] - start[name].float()).norm() < (raw[name] - start[name].float()).norm()

    export.main(["--autoencoder", str(tiny_checkpoint / "autoencoder"), "--denoiser", str(dn / "checkpoint"),
                 "--output", str(tmp_path / "model"), "--image-size", "64", "64"])
    shipped = load_file(tmp_path / "model" / "denoiser" / "diffusion_pytorch_model.safetensors")
    assert torch.allclose(shipped[name].float(), average[name], atol=1e-3)
    # The export's copy of the autoencoder, found in another folder, is the same autoencoder (its rollouts may train).
    assert weights_fingerprint(load_component(RGBDAutoencoder, tmp_path / "model" / "autoencoder")) == \
        weights_fingerprint(load_component(RGBDAutoencoder, tiny_checkpoint / "autoencoder"))
    # Blended with the weights it started from: a quarter of those, three quarters of the average.
    export.main(["--autoencoder", str(tiny_checkpoint / "autoencoder"), "--denoiser", str(dn / "checkpoint"),
                 "--denoiser-blend", str(tiny_checkpoint / "denoiser"), "0.25", "--output", str(tmp_path / "blend"),
                 "--image-size", "64", "64"])
    blended = load_file(tmp_path / "blend" / "denoiser" / "diffusion_pytorch_model.safetensors")
    assert torch.allclose(blended[name].float(), 0.75 * average[name] + 0.25 * start[name].float(), atol=1e-3)
    with pytest.raises(SystemExit):  # argparse's error exit: the weight is not a number
        export.main(["--autoencoder", str(tiny_checkpoint / "autoencoder"), "--denoiser", str(dn / "checkpoint"),
                     "--denoiser-blend", str(tiny_checkpoint / "denoiser"), "half", "--output", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()

    # Rollouts from a model with another autoencoder would live in another latent space: refused.
    torch.manual_seed(1)
    RGBDAutoencoder(latent_channels=4, block_out_channels=(16, 16, 16, 16)).save_pretrained(tmp_path / "other_ae")
    arguments[arguments.index("--autoencoder") + 1] = str(tmp_path / "other_ae")
    arguments[arguments.index("--output") + 1] = str(tmp_path / "dn_other")
    with pytest.raises(ValueError, match="another latent space"):
        train_denoiser.main(arguments)


def test_blended_weights_lie_between_the_two_and_other_architectures_are_refused():
    from mirage_ros.model import MemoryConditionedDenoiser
    from mirage_ros.training.export import blend_weights

    torch.manual_seed(0)
    model, other = (MemoryConditionedDenoiser(latent_channels=4, block_out_channels=(16, 16)) for _ in range(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blend_weights(model, other, 0.3)
    for key, value in model.state_dict().items():
        assert torch.allclose(value, 0.7 * before[key] + 0.3 * other.state_dict()[key], atol=1e-6), key
    assert not torch.equal(model.state_dict()["unet.conv_in.weight"], before["unet.conv_in.weight"])
    wider = MemoryConditionedDenoiser(latent_channels=4, block_out_channels=(32, 32))
    with pytest.raises(ValueError, match="another architecture"):
        blend_weights(model, wider, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend_weights(model, other, 1.5)


def test_anchored_rollouts_observe_every_nth_true_frame_and_generate_the_rest(tmp_path, tiny_checkpoint):
    """``anchor_every`` N: frames 0, N, 2N... are the true frames' encodings (observed), the others generated;
    the steps after an anchor continue from it."""
    from mirage_ros.model import WorldModel
    from mirage_ros.training.latents import encode_sequences
    from mirage_ros.training.rollouts import roll_out_sequences
    from mirage_ros.worlds.dataset import SequenceDataset

    torch.set_num_threads(2)
    write_dataset(tmp_path / "data", "train", worlds=1, sequences_per_world=1, frames=8, width=64, height=64,
                  workers=1, progress=False)
    sequences = SequenceDataset(tmp_path / "data", "train")
    model = WorldModel.from_pretrained(tiny_checkpoint)
    truth = encode_sequences(model.autoencoder, sequences).latents[0].float()
    rollout = roll_out_sequences(model, sequences, anchor_every=3)
    latents, depths = rollout.latents[0].float(), rollout.depths[0]
    close = [torch.allclose(latents[i], truth[i], atol=1e-2) for i in range(8)]
    # Frame 5 is generated too, but the camera (turning in place) is back at anchor 3's view, whose tokens
    # the memory shows as they were seen: it equals that frame's encoding as well.
    assert torch.equal(truth[5], truth[3])
    assert close == [True, False, False, True, False, True, True, False]
    assert torch.equal(depths[3], sequences[0]["depth"][3].float())  # anchors keep the true depth
    assert rollout.rgb[0].shape == (8, 3, 64, 64)
    free = roll_out_sequences(model, sequences).latents[0].float()
    assert torch.equal(free[:3], latents[:3])  # same start, same seed: the same frames until the first anchor
    assert not torch.allclose(free[4], latents[4], atol=1e-3)  # after it, generation continues from the anchor
    with pytest.raises(ValueError, match="anchor_every"):
        roll_out_sequences(model, sequences, anchor_every=-1)


def test_read_refiner_training_beats_the_raw_read_and_exports_with_the_model(tmp_path, tiny_checkpoint):
    """``mirage-train-refiner``: the refined reads come closer to the true latents than the reads
    themselves; ``mirage-export --refiner`` ships the refiner, which ``from_pretrained`` loads."""
    from mirage_ros.model import WorldModel

    torch.set_num_threads(2)
    write_dataset(tmp_path / "data", "train", worlds=1, sequences_per_world=2, frames=10, width=64, height=64,
                  workers=1, progress=False)
    rf = tmp_path / "rf"
    train_refiner.main(["--data", str(tmp_path / "data"), "--batch-size", "8", "--log-every", "1", "--workers", "0",
                        "--mixed-precision", "no", "--output", str(rf), "--steps", "30", "--save-every", "15",
                        "--lr", "2e-3", "--autoencoder", str(tiny_checkpoint / "autoencoder"), "--hidden-channels",
                        "16", "--blocks", "2", "--max-far", "4", "--ema-decay", "0.9"])
    log = [json.loads(line) for line in (rf / "log.jsonl").read_text().splitlines()]
    assert len(log) == 30 and log[0]["loss"] == pytest.approx(log[0]["mse_read"], rel=1e-4)  # starts as the read
    late = log[-10:]
    assert sum(r["loss"] for r in late) < 0.9 * sum(r["mse_read"] for r in late)
    export.main(["--autoencoder", str(tiny_checkpoint / "autoencoder"), "--denoiser", str(tiny_checkpoint / "denoiser"),
                 "--refiner", str(rf / "checkpoint"), "--output", str(tmp_path / "model"), "--image-size", "64", "64"])
    assert not WorldModel.from_pretrained(tmp_path / "model").refiner.config.redraws_imagined

    # Continued on memories of the model's own rollouts: the rollouts keep what they showed, and the
    # refiner, which has now learned on imagined memories, is marked to redraw imagined tokens too.
    train_refiner.main(["--data", str(tmp_path / "data"), "--batch-size", "4", "--log-every", "1", "--workers", "0",
                        "--mixed-precision", "no", "--output", str(tmp_path / "rf2"), "--steps", "3", "--lr", "1e-3",
                        "--autoencoder", str(tiny_checkpoint / "autoencoder"), "--init-from", str(rf / "checkpoint"),
                        "--rollouts-from", str(tiny_checkpoint), "--rollout-probability", "1", "--max-far", "4"])
    rollouts = load_sequences(tmp_path / "rf2" / "rollouts.safetensors", {"split": "train"})
    assert [tuple(colour.shape) for colour in rollouts.rgb] == [(10, 3, 64, 64)] * 2
    assert len(losses(tmp_path / "rf2")) == 3
    export.main(["--autoencoder", str(tiny_checkpoint / "autoencoder"), "--denoiser", str(tiny_checkpoint / "denoiser"),
                 "--refiner", str(tmp_path / "rf2" / "checkpoint"), "--output", str(tmp_path / "model2"),
                 "--image-size", "64", "64"])
    assert WorldModel.from_pretrained(tmp_path / "model2").refiner.config.redraws_imagined

    # Widened to also read the memory 2x finer, from the first run: it starts as that refiner (the first
    # loss is the plain refiner's on the same examples, not the raw read's) and ships with the model.
    for run, extra in (("rf_plain", []), ("rf_fine", ["--supersample", "2", "--redraw", "0", "0.25"])):
        train_refiner.main(["--data", str(tmp_path / "data"), "--batch-size", "4", "--log-every", "1", "--workers",
                            "0", "--mixed-precision", "no", "--output", str(tmp_path / run), "--steps", "2", "--lr",
                            "1e-3", "--autoencoder", str(tiny_checkpoint / "autoencoder"), "--init-from",
                            str(rf / "checkpoint"), "--max-far", "4", "--seed", "3"] + extra)
    plain_log, fine_log = (json.loads((tmp_path / run / "log.jsonl").read_text().splitlines()[0])
                           for run in ("rf_plain", "rf_fine"))
    assert fine_log["loss"] == pytest.approx(plain_log["loss"], rel=1e-4)
    assert fine_log["loss"] < 0.95 * fine_log["mse_read"]
    export.main(["--autoencoder", str(tiny_checkpoint / "autoencoder"), "--denoiser", str(tiny_checkpoint / "denoiser"),
                 "--refiner", str(tmp_path / "rf_fine" / "checkpoint"), "--output", str(tmp_path / "model3"),
                 "--image-size", "64", "64"])
    config = WorldModel.from_pretrained(tmp_path / "model3").refiner.config
    assert (config.supersample, config.keep_below, config.redraw_above) == (2, 0.0, 0.25)
    (tmp_path / "bad.json").write_text('{"memory": {"voxel_size": -1}}')
    with pytest.raises(SystemExit):  # argparse's error exit, before anything is loaded
        train_refiner.main(["--data", str(tmp_path / "data"), "--output", str(tmp_path / "rf_bad"), "--autoencoder",
                            str(tiny_checkpoint / "autoencoder"), "--memory-settings", str(tmp_path / "bad.json")])
    assert not (tmp_path / "rf_bad").exists()


def test_imagined_read_targets_render_the_remembered_frames_at_the_target_camera(tmp_path):
    """``ImaginedReadSamples``: the target of a read of remembered (here: true) frames is those frames'
    colour and depth rendered at the target camera and re-encoded, so on the cells the refiner redraws
    wholly (misaligned tokens) it is closer to the target frame's own latent than the read's mosaic."""
    from mirage_ros.memory import LatentMemoryConfig
    from mirage_ros.model import DEFAULT_CHECKPOINT
    from mirage_ros.model.read_refiner import REDRAW_ABOVE
    from mirage_ros.training.latents import encode_sequences
    from mirage_ros.training.samples import ImaginedReadSamples, LatentSequences, SampleConfig
    from mirage_ros.worlds.dataset import SequenceDataset

    torch.set_num_threads(2)
    write_dataset(tmp_path / "data", "train", worlds=1, sequences_per_world=1, frames=10, workers=1, progress=False)
    autoencoder = load_component(RGBDAutoencoder, DEFAULT_CHECKPOINT / "autoencoder").requires_grad_(False)
    frames = SequenceDataset(tmp_path / "data", "train")
    true = encode_sequences(autoencoder, frames)
    colour = [frames[0]["rgb"].permute(0, 3, 1, 2).contiguous()]
    with pytest.raises(ValueError, match="decoded colour"):
        ImaginedReadSamples(true, LatentMemoryConfig(), autoencoder)
    remembered = LatentSequences(true.latents, true.depths, true.intrinsics, true.poses, colour)
    samples = ImaginedReadSamples(remembered, LatentMemoryConfig(), autoencoder, SampleConfig(max_far=4))
    latents = true.latents[0].float()
    scored = mosaic_error = target_error = 0.0
    for index in range(40):
        example = samples[index]
        assert set(example["weight"].unique().tolist()) <= {0.0, 1.0}
        j = 1 + int(((latents - example["context"]) ** 2).flatten(1).sum(1).argmin())  # context is frame j - 1
        redrawn = example["weight"].bool() & example["coverage"] & (example["alignment"].abs().amax(0) >= REDRAW_ABOVE)
        scored += float(redrawn.sum())
        target_error += float(((example["target"] - latents[j]) ** 2).sum(0)[redrawn].sum())
        mosaic_error += float(((example["memory_latent"] - latents[j]) ** 2).sum(0)[redrawn].sum())
    assert scored > 200
    assert target_error < 0.85 * mosaic_error


def test_degraded_contexts_are_washed_out_and_blurred_in_the_share_asked_for():
    """``SampleConfig.context_degradation``: that share of the examples take a context with less contrast and less
    detail than the true previous frame (``degrade_latent``; same shape, about the same mean colour); the target and
    the rest are untouched, and the draws repeat per example index."""
    import numpy as np

    from mirage_ros.memory import LatentMemoryConfig
    from mirage_ros.training.samples import LatentSequences, MemoryConditionedSamples, SampleConfig, degrade_latent

    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(8, 16, 16, generator=generator) + torch.arange(8.0)[:, None, None]
    degraded = degrade_latent(latent, np.random.default_rng(1))
    assert degraded.shape == latent.shape
    assert torch.allclose(degraded.mean((1, 2)), latent.mean((1, 2)), atol=0.05)
    assert float(degraded.std((1, 2)).max()) < 0.8 * float(latent.std((1, 2)).min())
    assert torch.equal(degraded, degrade_latent(latent, np.random.default_rng(1)))
    # The ranges are the caller's: all of the contrast and no zoom leave the latent as it was.
    assert torch.allclose(degrade_latent(latent, np.random.default_rng(1), (1.0, 1.0), (1.0, 1.0)), latent, atol=1e-5)
    halved = degrade_latent(latent, np.random.default_rng(1), (0.5, 0.5), (1.0, 1.0))
    assert torch.allclose(halved.std((1, 2)), 0.5 * latent.std((1, 2)), rtol=1e-4)

    frames = 6
    latents = torch.randn(frames, 8, 16, 16, generator=generator)
    poses = np.repeat(np.eye(4)[None], frames, axis=0)
    sequences = LatentSequences([latents], [torch.ones(frames, 128, 128)], [np.eye(3)], [poses])

    def degraded_share(probability: float) -> float:
        config = SampleConfig(no_memory_probability=1.0, latent_noise=0.0, context_degradation=probability)
        samples = MemoryConditionedSamples(sequences, LatentMemoryConfig(), config, seed=3)
        changed = []
        for index in range(200):
            example = samples[index]
            j = int(((latents - example["target"]) ** 2).flatten(1).sum(1).argmin())
            assert torch.equal(example["target"], latents[j])
            changed.append(not torch.equal(example["context"], latents[j - 1]))
            if changed[-1]:
                assert example["context"].std() < latents[j - 1].std()
        assert torch.equal(samples[7]["context"], samples[7]["context"])
        return float(np.mean(changed))

    assert degraded_share(0.0) == 0.0
    assert degraded_share(1.0) == 1.0
    assert 0.25 < degraded_share(0.4) < 0.55
