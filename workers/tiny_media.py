"""Tiny real media models for tests and benchmarks, built locally with random weights (no download).

``write_tiny_diffusers(dir)``: a StableDiffusionPipeline of random 4/8-channel parts (16x16 images).
``write_tiny_whisper(dir)``: a WhisperForConditionalGeneration (1 encoder and 1 decoder layer,
d_model 64) with a real WhisperProcessor: the feature extractor and a byte-level BPE tokenizer
(256 byte symbols plus Whisper's special tokens), saved with save_pretrained, so the worker loads
it exactly as it loads a downloaded checkpoint. Its transcripts are gibberish; the plumbing is real.
``write_tiny_piper_voice(dir)``: a Piper voice, ``tiny-voice.onnx`` and its ``.onnx.json``, with Piper's
own inputs and output (phoneme ids, their lengths, the noise/length/width scales -> audio): each
phoneme id looks up 64 random samples and the length scale stretches the result, so ``speed`` is
heard in the length; the config carries Piper's English phoneme map and eSpeak voice.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                  "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what byte-level BPE vocabularies use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in chars], strict=True))


def write_tiny_whisper(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: index for index, symbol in enumerate(_bytes_to_unicode().values())}
    (directory / "vocab.json").write_text(json.dumps(vocab), "utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", "utf-8")
    tokenizer = WhisperTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                                 unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    ids: dict[str, int] = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in SPECIAL_TOKENS}  # type: ignore[arg-type]
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=1,
                           decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500,
                           max_target_positions=128, pad_token_id=ids["<|endoftext|>"],
                           bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
                           decoder_start_token_id=ids["<|startoftranscript|>"])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = ids["<|startoftranscript|>"]
    model.generation_config.eos_token_id = ids["<|endoftext|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    # no forced language/task tokens: a bare checkpoint (the worker passes task/language only when it has them)
    setattr(model.generation_config, "forced_decoder_ids", None)  # noqa: B010 - not in the stubs of every version
    model.generation_config.max_length = None
    model.generation_config.max_new_tokens = 16  # random weights never stop: keep each window short
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _clip_vocabulary() -> dict[str, int]:
    """Byte-level symbols, each also as a word end (``x</w>``), then CLIP's two special tokens."""
    symbols = list(_bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def write_tiny_diffusers(directory: Path, seed: int = 0) -> Path:
    """A StableDiffusionPipeline with random weights (UNet and VAE of 4/8 channels, a 1-layer CLIP text
    encoder, a byte-level CLIP tokenizer, DDIM), saved with save_pretrained: 16x16 images in a few ms."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    scratch = directory / ".tokenizer-src"
    scratch.mkdir(exist_ok=True)
    vocab = _clip_vocabulary()
    (scratch / "vocab.json").write_text(json.dumps(vocab), "utf-8")
    (scratch / "merges.txt").write_text("#version: 0.2\n", "utf-8")
    tokenizer = CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=16)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=2, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=2, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=vocab["<|startoftext|>"],
                                                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                                                hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                num_hidden_layers=1, vocab_size=len(vocab), max_position_embeddings=16))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(directory)  # type: ignore[attr-defined]
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()
    return directory


TINY_VOICE_HOP = 64  # audio samples per phoneme id at length_scale 1


def write_tiny_piper_voice(directory: Path, seed: int = 0, speakers: tuple[str, ...] = ()) -> Path:
    """Write the voice into ``directory`` (created) and return its .onnx file."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    directory.mkdir(parents=True, exist_ok=True)
    symbols = 1 + max(i for ids in DEFAULT_PHONEME_ID_MAP.values() for i in ids)
    table = np.random.default_rng(seed).normal(0.0, 0.5, (symbols, TINY_VOICE_HOP)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input"], ["per_phoneme"]),  # [1, N, hop]
        helper.make_node("Reshape", ["per_phoneme", "flat_shape"], ["flat"]),  # [1, 1, N * hop]
        helper.make_node("Tanh", ["flat"], ["wave"]),
        helper.make_node("Slice", ["scales", "one", "two"], ["length_scale"]),
        helper.make_node("Concat", ["unit_scales", "length_scale"], ["resize_scales"], axis=0),
        helper.make_node("Resize", ["wave", "", "resize_scales"], ["output"], mode="linear"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
              helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
              helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3])]
    if speakers:  # a multi-speaker voice takes sid (unused by this tiny one)
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
    initializers = [numpy_helper.from_array(table, "table"),
                    numpy_helper.from_array(np.array([1, 1, -1], dtype=np.int64), "flat_shape"),
                    numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
                    numpy_helper.from_array(np.array([2], dtype=np.int64), "two"),
                    numpy_helper.from_array(np.array([1.0, 1.0], dtype=np.float32), "unit_scales")]
    graph = helper.make_graph(nodes, "tiny-voice", inputs,
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "samples"])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="acore-tiny")
    onnx.checker.check_model(model)
    voice = directory / "tiny-voice.onnx"
    onnx.save(model, str(voice))
    config = {"audio": {"sample_rate": 16000}, "espeak": {"voice": "en-us"}, "phoneme_type": "espeak",
              "num_symbols": symbols, "num_speakers": max(1, len(speakers)),
              "speaker_id_map": {name: index for index, name in enumerate(speakers)},
              "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
              "phoneme_id_map": DEFAULT_PHONEME_ID_MAP, "piper_version": "1.0.0"}
    (directory / "tiny-voice.onnx.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return voice
