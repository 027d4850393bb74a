"""Tiny, seeded Stable Diffusion, BLIP and BLIP-2 models built offline, for tests (diffusers'
get_dummy_components); imported by conftest.py, whose fixtures (tiny_sd_pipeline, blip_dir, blip2_dir,
blip2_query_tokens) the tests use, and by ``benchmarks/paper_toy.py``, which runs the same toy ``paper``
preset on a GPU.

The BLIP builders write model + processor with ``save_pretrained`` so tests exercise the real
``from_pretrained`` path. Weights are random but drawn with a wide ``initializer_range`` so different
images get different captions (the default scale gives every image the same one), which lets tests
check that batching keeps captions in image order.
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 16  # pixels; with patch 8 the vision encoder sees 4 patches
NUM_QUERY_TOKENS = 4  # BLIP-2 Q-Former queries = <image> tokens the processor inserts
INIT_RANGE = 0.5  # wide random weights, so captions depend on the image
HIDDEN = 32

WORDS = [
    "a",
    "photo",
    "picture",
    "of",
    "the",
    "cat",
    "dog",
    "on",
    "red",
    "blue",
    "sky",
    "grass",
    "tree",
    "car",
]


def _vision_config() -> dict:
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        projection_dim=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
        initializer_range=INIT_RANGE,
    )


def _image_processor():
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def make_tiny_blip(directory: str | Path, seed: int = 0) -> Path:
    """A tiny BlipForConditionalGeneration + BlipProcessor (WordPiece vocab of ~20 words) in ``directory``."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    directory = Path(directory)
    # BLIP's tokenizer is BERT's with an extra [DEC] token that starts every caption
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=HIDDEN,
            encoder_hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            projection_dim=HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            initializer_range=INIT_RANGE,
        ),
        vision_config=_vision_config(),
        projection_dim=HIDDEN,
        image_text_hidden_size=HIDDEN,
    )
    with torch.random.fork_rng():  # leave the caller's RNG alone
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    BlipProcessor(image_processor=_image_processor(), tokenizer=tokenizer).save_pretrained(directory)
    return directory


def make_tiny_blip2(directory: str | Path, seed: int = 0) -> Path:
    """A tiny Blip2ForConditionalGeneration (OPT decoder) + Blip2Processor (byte-level BPE) in ``directory``."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, GPT2Tokenizer

    directory = Path(directory)
    # OPT's special tokens, then one token per printable ASCII byte (space is "Ġ" in byte-level BPE):
    # prompts tokenize without merges, and random generations decode to readable, distinct text
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in sorted(ByteLevel.alphabet()):
        if char == "Ġ" or (char.isascii() and char.isprintable()):
            vocab.setdefault(char, len(vocab))
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=[],
        bos_token="</s>",  # as OPT: BOS and EOS are both </s>
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
    )
    # Blip2Processor adds the special <image> token to the tokenizer; the model must agree on its id
    # and on how many of them stand for the Q-Former outputs (transformers >= 4.47 processor layout).
    processor = Blip2Processor(
        image_processor=_image_processor(), tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS
    )
    image_token_index = tokenizer.convert_tokens_to_ids(str(processor.image_token))
    vocab_size = len(tokenizer)
    config = Blip2Config(
        vision_config=_vision_config(),
        qformer_config=dict(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=2 * HIDDEN,
            max_position_embeddings=64,
            initializer_range=INIT_RANGE,
        ),
        text_config=dict(
            model_type="opt",
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            num_hidden_layers=1,
            ffn_dim=2 * HIDDEN,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            init_std=INIT_RANGE,
        ),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_index,
        initializer_range=INIT_RANGE,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def tiny_clip_tokenizer():
    """A CLIP tokenizer with one token per byte (and per byte + </w>) and no merges: any text tokenizes."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_sd_pipeline(seed: int = 0, sd2: bool = False):
    """diffusers' StableDiffusionPipelineFastTests.get_dummy_components, with an offline tokenizer.

    ``sd2``: the Stable Diffusion 2 layout at the same tiny width, as ``stabilityai/stable-diffusion-2``
    (768-v) ships it: linear projections in the transformer blocks, a head size per block, attention
    upcast to fp32, a GELU text encoder (OpenCLIP's) and a v-prediction scheduler (``prediction_type:
    v_prediction`` in its scheduler config, which the sd-lora backend must follow in training and
    sampling)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    sd2_unet = dict(use_linear_projection=True, attention_head_dim=(2, 4), upcast_attention=True) if sd2 else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=2,
            **sd2_unet,
        )
        vae = AutoencoderKL(
            block_out_channels=[4, 8], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4, norm_num_groups=2,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5,
            num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
            **({"hidden_act": "gelu", "projection_dim": 32} if sd2 else {}),
        ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if sd2 else "epsilon")
    return StableDiffusionPipeline(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
                                   tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
