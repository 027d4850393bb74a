"""Captioners: the class-name captioner and BLIP / BLIP-2 on tiny offline checkpoints (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.captions.captioners import CAPTIONERS, Captioner, CaptionerConfig, create_captioner
from pipeline.core.registry import UnknownNameError


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny matmuls run faster on one thread, and far faster when other jobs share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images():
    """Five different images of mixed size and mode (grayscale like the digits set, RGBA, RGB)."""
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)) for i in range(3)]
    out.append(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L"))
    out.append(Image.fromarray(rng.integers(0, 256, (30, 18, 4), dtype=np.uint8), mode="RGBA"))
    return out


LABELS = ["cat", "dog", "cat", "three", "car"]


# -- registry and classname ---------------------------------------------------------------------------
def test_registry_lists_the_three_captioners():
    assert CAPTIONERS.names() == ["blip", "blip2", "classname"]
    for name in CAPTIONERS.names():
        assert CAPTIONERS.get(name).name == name


def test_unknown_captioner_error_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        create_captioner(CaptionerConfig(name="llava"))
    message = str(info.value)
    assert "llava" in message
    for name in ("blip", "blip2", "classname"):
        assert name in message


def test_classname_captions_from_template(images):
    captioner = create_captioner(CaptionerConfig())
    assert isinstance(captioner, Captioner)
    assert captioner.caption(images[:2], ["cat", "fire truck"]) == [
        "a photo of a cat",
        "a photo of a fire truck",
    ]
    custom = create_captioner(CaptionerConfig(class_template="{label}"))
    assert custom.caption(images[:1], ["dog"]) == ["dog"]
    assert custom.source() == {
        "captioner": "classname",
        "model": None,
        "params": {"class_template": "{label}"},
    }
    json.dumps(custom.source())


def test_classname_rejects_bad_inputs(images):
    with pytest.raises(ValueError, match="label"):
        create_captioner(CaptionerConfig(class_template="a photo of a {name}"))
    with pytest.raises(ValueError, match="one label per image"):
        create_captioner(CaptionerConfig()).caption(images[:2], ["cat"])
    with pytest.raises(ValueError, match="uses no model"):
        create_captioner(CaptionerConfig(), model=object())


def test_config_validates_counts():
    with pytest.raises(ValueError, match="batch_size"):
        CaptionerConfig(batch_size=0)


# -- BLIP -----------------------------------------------------------------------------------------------
def test_blip_constructs_lazily_and_reports_a_clear_load_error(tmp_path, images):
    missing = tmp_path / "no-such-model"
    captioner = create_captioner(CaptionerConfig(name="blip", model=str(missing), device="cpu"))
    assert captioner.source()["model"] == str(missing)  # nothing loaded yet, nothing raised
    with pytest.raises(OSError, match="could not load BLIP model .*save_pretrained"):
        captioner.caption(images[:1], ["cat"])


def test_blip_default_model_id():
    source = create_captioner(CaptionerConfig(name="blip", device="cpu")).source()
    assert source["model"] == "Salesforce/blip-image-captioning-base"
    source2 = create_captioner(CaptionerConfig(name="blip2", device="cpu")).source()
    assert source2["model"] == "Salesforce/blip2-opt-2.7b"


def _check_captions(captions, n):
    assert isinstance(captions, list) and len(captions) == n
    assert all(isinstance(c, str) and c == c.strip() for c in captions)
    assert any(captions), "every caption empty: nothing was decoded"


def test_blip_captions_every_image_in_order_across_batches(blip_dir, images):
    config = CaptionerConfig(name="blip", model=str(blip_dir), batch_size=2, max_new_tokens=5, device="cpu")
    captioner = create_captioner(config)
    first = captioner.caption(images, LABELS)
    _check_captions(first, len(images))
    assert captioner.caption(images, LABELS) == first  # deterministic
    # batch boundaries change nothing: 2+2+1 equals one batch of 5 and one image at a time
    whole = create_captioner(
        CaptionerConfig(name="blip", model=str(blip_dir), batch_size=5, max_new_tokens=5)
    )
    assert whole.caption(images, LABELS) == first
    assert [captioner.caption([im], [lab])[0] for im, lab in zip(images, LABELS)] == first
    assert len(set(first)) > 1, "tiny model gives every image the same caption; the order check is void"
    # only words of the tiny vocabulary, no special tokens
    assert not any("[" in c for c in first)

    source = captioner.source()
    assert source["captioner"] == "blip"
    assert source["model"] == str(blip_dir)
    assert source["params"] == {
        "prompt": None,
        "max_new_tokens": 5,
        "num_beams": 1,
        "do_sample": False,
        "dtype": "float32",
    }
    json.dumps(source)
    assert create_captioner(CaptionerConfig(name="blip", model=str(blip_dir))).caption([], []) == []


def test_blip_conditional_prompt_is_not_echoed(blip_dir, images):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    prompt = "a picture of"
    config = CaptionerConfig(name="blip", model=str(blip_dir), batch_size=2, max_new_tokens=4, prompt=prompt)
    captions = create_captioner(config).caption(images, LABELS)
    assert len(captions) == len(images)
    assert all(isinstance(c, str) for c in captions)

    # reference: what the model generates after the prompt, decoded by hand
    model = BlipForConditionalGeneration.from_pretrained(blip_dir).eval()
    processor = BlipProcessor.from_pretrained(blip_dir)
    inputs = processor(
        images=[im.convert("RGB") for im in images], text=[prompt] * len(images), return_tensors="pt"
    )
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    full = processor.batch_decode(out, skip_special_tokens=True)
    assert all(text.startswith(prompt) for text in full)  # the model echoes the prompt...
    assert captions == [text[len(prompt) :].strip() for text in full]  # ...the captioner drops it

    beams = create_captioner(
        CaptionerConfig(name="blip", model=str(blip_dir), max_new_tokens=4, prompt=prompt, num_beams=2)
    )
    assert len(beams.caption(images[:3], LABELS[:3])) == 3
    assert beams.source()["params"]["num_beams"] == 2


def test_blip_uses_prebuilt_model_and_processor(blip_dir, images):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration.from_pretrained(blip_dir)
    processor = BlipProcessor.from_pretrained(blip_dir)
    config = CaptionerConfig(name="blip", batch_size=2, max_new_tokens=5)
    prebuilt = create_captioner(config, model=model, processor=processor)
    loaded = create_captioner(
        CaptionerConfig(name="blip", model=str(blip_dir), batch_size=2, max_new_tokens=5)
    )
    assert prebuilt.caption(images, LABELS) == loaded.caption(images, LABELS)
    assert prebuilt.source()["model"] == str(blip_dir)  # from the model's name_or_path


# -- BLIP-2 ---------------------------------------------------------------------------------------------
def test_tiny_blip2_processor_and_model_agree(blip2_dir, blip2_query_tokens):
    from transformers import Blip2Config, Blip2Processor

    processor = Blip2Processor.from_pretrained(blip2_dir)
    config = Blip2Config.from_pretrained(blip2_dir)
    assert processor.num_query_tokens == config.num_query_tokens == blip2_query_tokens
    assert processor.tokenizer.convert_tokens_to_ids(str(processor.image_token)) == config.image_token_index


def test_blip2_captions_every_image_in_order_across_batches(blip2_dir, images):
    config = CaptionerConfig(name="blip2", model=str(blip2_dir), batch_size=2, max_new_tokens=5, device="cpu")
    captioner = create_captioner(config)
    first = captioner.caption(images, LABELS)
    _check_captions(first, len(images))
    assert captioner.caption(images, LABELS) == first
    whole = create_captioner(
        CaptionerConfig(name="blip2", model=str(blip2_dir), batch_size=5, max_new_tokens=5)
    )
    assert whole.caption(images, LABELS) == first
    assert len(set(first)) > 1, "tiny model gives every image the same caption; the order check is void"
    assert not any("<image>" in c or "</s>" in c for c in first)

    source = captioner.source()
    assert source["captioner"] == "blip2"
    assert source["model"] == str(blip2_dir)
    assert source["params"]["max_new_tokens"] == 5 and source["params"]["prompt"] is None
    json.dumps(source)


def test_blip2_conditional_prompt_is_not_echoed(blip2_dir, images, blip2_query_tokens):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    prompt = "Question: what is in the photo? Answer:"
    config = CaptionerConfig(
        name="blip2", model=str(blip2_dir), batch_size=2, max_new_tokens=4, prompt=prompt
    )
    captioner = create_captioner(config)
    captions = captioner.caption(images, LABELS)
    assert len(captions) == len(images)
    assert not any(c.startswith("Question") for c in captions)
    assert captioner.source()["params"]["prompt"] == prompt

    # reference: decode only the tokens generated after <image>*n + BOS + prompt
    model = Blip2ForConditionalGeneration.from_pretrained(blip2_dir).eval()
    processor = Blip2Processor.from_pretrained(blip2_dir)
    inputs = processor(
        images=[im.convert("RGB") for im in images], text=[prompt] * len(images), return_tensors="pt"
    )
    assert (inputs["input_ids"][:, :blip2_query_tokens] == model.config.image_token_index).all()
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    assert new_tokens.shape[1] >= 1
    expected = [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    assert captions == expected


def test_blip2_mismatched_processor_fails_fast(blip2_dir, images, blip2_query_tokens):
    from transformers import Blip2Processor

    processor = Blip2Processor.from_pretrained(blip2_dir)
    processor.num_query_tokens = blip2_query_tokens + 1
    captioner = create_captioner(
        CaptionerConfig(name="blip2", model=str(blip2_dir), max_new_tokens=3), processor=processor
    )
    with pytest.raises(ValueError, match="num_query_tokens"):
        captioner.caption(images[:1], ["cat"])
