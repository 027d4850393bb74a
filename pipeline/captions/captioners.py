"""Captioners: one text caption per real training image (TCKR step 1).

TCKR captions every real training image with BLIP-2 and conditions the generator on the caption. The
``classname`` captioner is the paper's "only class name" ablation and the offline default; ``blip`` and
``blip2`` run the Salesforce captioning models through transformers. Pick one by name::

    captioner = create_captioner(CaptionerConfig(name="blip2", batch_size=8))
    captions = captioner.caption(images, labels)
    record = captioner.source()  # stored next to every caption

Model captioners load their weights lazily on the first :meth:`Captioner.caption` call, so building one
(e.g. to show its :meth:`Captioner.source` in the studio) costs nothing.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from ..core.common import resolve_device, resolve_dtype
from ..core.machine import hub_unreachable
from ..core.registry import Registry
from ..core.schema import schema
from .templates import DEFAULT_CLASS_TEMPLATE

logger = logging.getLogger(__name__)


@schema
@dataclass(frozen=True)
class CaptionerConfig:
    """Which captioner to run and how it generates."""

    name: str = "classname"  # registered captioner: classname | blip | blip2
    model: str | None = None  # hub id or local dir (blip/blip2); None = the captioner's default id
    batch_size: int = 16  # images per forward pass
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    dtype: str = "auto"  # "auto" (the precision policy: bf16 on CUDA, fp32 on CPU) | float32 | float16 | bfloat16
    max_new_tokens: int = 30  # caption length cap
    num_beams: int = 1  # beam search width
    prompt: str | None = None  # conditional prefix: BLIP "a picture of", BLIP-2 "Question: ... Answer:"
    class_template: str = DEFAULT_CLASS_TEMPLATE  # classname captioner: caption made from the class name

    def __post_init__(self) -> None:
        for field_name in ("batch_size", "max_new_tokens", "num_beams"):
            if getattr(self, field_name) < 1:
                raise ValueError(
                    f"CaptionerConfig.{field_name} must be >= 1, got {getattr(self, field_name)}"
                )


class Captioner(abc.ABC):
    """Turns images (and their class names) into one caption each."""

    name: ClassVar[str]

    def __init__(self, config: CaptionerConfig) -> None:
        self.config = config

    def source(self) -> dict[str, Any]:
        """Provenance stored with every caption: which captioner, which weights, which parameters."""
        return {"captioner": self.name, "model": None, "params": {}}

    @abc.abstractmethod
    def caption(self, images: Sequence[Image.Image], labels: Sequence[str]) -> list[str]:
        """One caption per image; ``labels`` are the images' class names."""


CAPTIONERS: Registry[type[Captioner]] = Registry("captioner")


def create_captioner(config: CaptionerConfig, model: Any = None, processor: Any = None) -> Captioner:
    """Build the captioner ``config.name`` names.

    ``model`` / ``processor`` are optional pre-built transformers objects (tests, or the studio reusing a
    model it already loaded); a pre-built model is used as given, on its own device and dtype. Whatever
    is not passed is loaded from ``config.model`` on the first :meth:`Captioner.caption` call.
    """
    captioner = CAPTIONERS.get(config.name)(config)
    if model is not None or processor is not None:
        if not isinstance(captioner, HFCaptioner):
            raise ValueError(f"captioner {config.name!r} uses no model; do not pass model= or processor=")
        captioner.use_prebuilt(model=model, processor=processor)
    return captioner


def _check_lengths(images: Sequence[Image.Image], labels: Sequence[str]) -> None:
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels; pass one label per image")


@CAPTIONERS.register("classname", help="caption = class_template with the class name (no model)")
class ClassNameCaptioner(Captioner):
    """Captions from the class name alone (TCKR's "only class name" ablation)."""

    name = "classname"

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        try:
            config.class_template.format(label="x")
        except (KeyError, IndexError) as err:
            raise ValueError(
                f"class_template {config.class_template!r} may only use the {{label}} placeholder"
            ) from err

    def source(self) -> dict[str, Any]:
        return {
            "captioner": self.name,
            "model": None,
            "params": {"class_template": self.config.class_template},
        }

    def caption(self, images: Sequence[Image.Image], labels: Sequence[str]) -> list[str]:
        _check_lengths(images, labels)
        return [self.config.class_template.format(label=label) for label in labels]


class HFCaptioner(Captioner):
    """Shared batching, lazy loading and decoding for transformers image-to-text models."""

    default_model: ClassVar[str]  # hub id used when config.model is None
    display_name: ClassVar[str]  # for messages, e.g. "BLIP-2"

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        self._model: Any = None
        self._processor: Any = None
        self._prebuilt_model = False

    # -- hooks for the concrete models -------------------------------------------------------------
    @abc.abstractmethod
    def _model_class(self) -> Any:
        """The transformers ``...ForConditionalGeneration`` class."""

    @abc.abstractmethod
    def _processor_class(self) -> Any:
        """The transformers processor class (image processor + tokenizer)."""

    @abc.abstractmethod
    def _echoed_prefix(self, model: Any, inputs: dict[str, Any], batch: int) -> Any:
        """The token ids ``generate`` puts in front of the new tokens (a (batch, L) tensor)."""

    def _check_consistency(self, model: Any, processor: Any) -> None:
        """Raise when model and processor disagree (override where it matters)."""

    # -- public ------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str | None:
        """The hub id or folder the weights come from (None for an in-memory pre-built model)."""
        if self.config.model is not None:
            return self.config.model
        if self._prebuilt_model:
            return getattr(self._model, "name_or_path", None) or None
        return self.default_model

    def use_prebuilt(self, model: Any = None, processor: Any = None) -> None:
        """Use already-built transformers objects instead of loading them."""
        if model is not None:
            self._model = model.eval()
            self._prebuilt_model = True
        if processor is not None:
            self._processor = processor

    def source(self) -> dict[str, Any]:
        return {
            "captioner": self.name,
            "model": self.model_id,
            "params": {
                "prompt": self.config.prompt,
                "max_new_tokens": self.config.max_new_tokens,
                "num_beams": self.config.num_beams,
                "do_sample": False,
                "dtype": str(self._dtype()).removeprefix("torch."),
            },
        }

    def caption(self, images: Sequence[Image.Image], labels: Sequence[str]) -> list[str]:
        """Caption ``images`` in batches of ``config.batch_size``; labels are not shown to the model."""
        import torch

        # 1. check inputs
        _check_lengths(images, labels)
        if not images:
            return []
        # 2. load the model and processor once
        model, processor = self._ensure_loaded()
        device, dtype = model.device, model.dtype
        # 3. generate batch by batch; greedy / beam search only, so captions are reproducible
        captions: list[str] = []
        size = self.config.batch_size
        with torch.inference_mode():
            for start in range(0, len(images), size):
                batch = [image.convert("RGB") for image in images[start : start + size]]
                captions.extend(self._caption_batch(model, processor, batch, device, dtype))
                logger.debug("captioned %d / %d images", len(captions), len(images))
        return captions

    # -- internals ---------------------------------------------------------------------------------
    def _dtype(self) -> Any:
        if self._prebuilt_model:
            return self._model.dtype
        return resolve_dtype(self.config.dtype, resolve_device(self.config.device))

    def _ensure_loaded(self) -> tuple[Any, Any]:
        model_id = self.model_id
        if self._processor is None:
            if model_id is None:
                raise ValueError(
                    f"no processor for the pre-built {self.display_name} model: pass processor= or set "
                    "CaptionerConfig.model"
                )
            self._processor = self._from_pretrained(self._processor_class(), model_id)
        if self._model is None:
            device = resolve_device(self.config.device)
            dtype = resolve_dtype(self.config.dtype, device)
            logger.info("loading %s model %r on %s (%s)", self.display_name, model_id, device, dtype)
            model = self._from_pretrained(self._model_class(), model_id, dtype=dtype)
            self._model = model.to(device).eval()
        self._check_consistency(self._model, self._processor)
        return self._model, self._processor

    def _from_pretrained(self, cls: Any, model_id: str, **kwargs: Any) -> Any:
        """``cls.from_pretrained`` from a local folder or the local cache, else from the Hub once it answers,
        with one clear error."""
        from huggingface_hub import is_offline_mode

        # 1. a local folder or the cache: without a network huggingface_hub retries every file for minutes
        #    before falling back to it
        local = "pass a local folder saved with save_pretrained (--model DIR)"
        try:
            return cls.from_pretrained(model_id, local_files_only=True, **kwargs)
        except (OSError, ValueError) as err:  # missing files; ValueError: a bad id
            if Path(model_id).is_dir():
                raise OSError(f"could not load {self.display_name} model from folder {model_id}: {err}") from err
            if Path(model_id).expanduser().is_absolute() or model_id.startswith((".", "~")):  # a path, not a hub id
                raise OSError(f"could not load {self.display_name} model {model_id!r}: there is no such folder; "
                              f"{local}") from err
            cached = err
        if is_offline_mode():
            raise OSError(f"{self.display_name} model {model_id!r} is not in the local cache and HF_HUB_OFFLINE is "
                          f"set: {local}, or download it where the Hub can be reached") from cached
        # 2. the Hub, if it can be reached at all (one short probe instead of minutes of retries)
        reason = hub_unreachable()
        if reason:
            raise OSError(f"cannot reach the Hugging Face Hub ({reason}) to download {self.display_name} model "
                          f"{model_id!r}, which is not in the local cache: set HF_HUB_OFFLINE=1 and {local}, or "
                          "connect to the network") from cached
        try:
            return cls.from_pretrained(model_id, local_files_only=False, **kwargs)
        except (OSError, ValueError) as err:
            raise OSError(f"could not load {self.display_name} model {model_id!r} from the Hub ({err}); {local}, "
                          "or set HF_HUB_OFFLINE=1 to use only the local cache") from err

    def _caption_batch(
        self, model: Any, processor: Any, batch: list[Image.Image], device: Any, dtype: Any
    ) -> list[str]:
        prompt = self.config.prompt
        if prompt:
            inputs = processor(images=batch, text=[prompt] * len(batch), return_tensors="pt")
        else:
            inputs = processor(images=batch, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        # generate() may edit input_ids in place (BLIP swaps [CLS] for [DEC]): take the prefix first
        prefix = self._echoed_prefix(model, inputs, len(batch)).to(device)
        out = model.generate(
            **inputs,
            max_new_tokens=self.config.max_new_tokens,
            num_beams=self.config.num_beams,
            do_sample=False,  # override any sampling in the checkpoint's generation_config
        )
        return self._decode(processor, out, prefix)

    def _decode(self, processor: Any, out: Any, prefix: Any) -> list[str]:
        """Decode only the new tokens: drop the image tokens and the prompt the model echoes back."""
        length = prefix.shape[1]
        echoed = out.shape[1] >= length and bool((out[:, :length] == prefix).all())
        texts = processor.batch_decode(out[:, length:] if echoed else out, skip_special_tokens=True)
        prompt = (self.config.prompt or "").strip()
        captions = []
        for text in texts:
            text = text.strip()
            # fallback for versions whose echo we could not match token by token (BERT lower-cases)
            if not echoed and prompt and text.lower().startswith(prompt.lower()):
                text = text[len(prompt) :].strip()
            captions.append(text)
        return captions


@CAPTIONERS.register("blip", help="BLIP image captioning (Salesforce/blip-image-captioning-base)")
class BlipCaptioner(HFCaptioner):
    """BLIP (Li et al., 2022) captions; ``prompt`` such as "a picture of" makes them conditional."""

    name = "blip"
    default_model = "Salesforce/blip-image-captioning-base"
    display_name = "BLIP"

    def _model_class(self) -> Any:
        from transformers import BlipForConditionalGeneration

        return BlipForConditionalGeneration

    def _processor_class(self) -> Any:
        from transformers import BlipProcessor

        return BlipProcessor

    def _echoed_prefix(self, model: Any, inputs: dict[str, Any], batch: int) -> Any:
        import torch

        # BlipForConditionalGeneration.generate feeds the decoder [DEC] + prompt without its final [SEP]
        bos = model.config.text_config.bos_token_id
        if "input_ids" not in inputs:
            return torch.full((batch, 1), bos, dtype=torch.long)
        prefix = inputs["input_ids"][:, :-1].clone()
        prefix[:, 0] = bos
        return prefix


@CAPTIONERS.register("blip2", help="BLIP-2 captioning (Salesforce/blip2-opt-2.7b)")
class Blip2Captioner(HFCaptioner):
    """BLIP-2 (Li et al., 2023) captions, the captioner TCKR uses; prompt e.g. "Question: ... Answer:"."""

    name = "blip2"
    default_model = "Salesforce/blip2-opt-2.7b"
    display_name = "BLIP-2"

    def _model_class(self) -> Any:
        from transformers import Blip2ForConditionalGeneration

        return Blip2ForConditionalGeneration

    def _processor_class(self) -> Any:
        from transformers import Blip2Processor

        return Blip2Processor

    def _check_consistency(self, model: Any, processor: Any) -> None:
        # Recent transformers put num_query_tokens <image> tokens into input_ids and scatter the Q-Former
        # outputs into them; a processor that disagrees with the model fails deep inside generate().
        config = model.config
        if getattr(processor, "num_query_tokens", None) is None:
            logger.warning(
                "BLIP-2 processor has no num_query_tokens (saved by an old transformers); using the model's %d",
                config.num_query_tokens,
            )
            processor.num_query_tokens = config.num_query_tokens
        if processor.num_query_tokens != config.num_query_tokens:
            raise ValueError(
                f"BLIP-2 processor.num_query_tokens={processor.num_query_tokens} but the model has "
                f"num_query_tokens={config.num_query_tokens}; save model and processor together"
            )
        image_token_id = processor.tokenizer.convert_tokens_to_ids(str(processor.image_token))
        if config.image_token_index is None or config.image_token_index != image_token_id:
            raise ValueError(
                f"BLIP-2 model image_token_index={config.image_token_index} but the processor's image token "
                f"{str(processor.image_token)!r} has id {image_token_id}; save model and processor together"
            )

    def _echoed_prefix(self, model: Any, inputs: dict[str, Any], batch: int) -> Any:
        import torch

        config = model.config
        if config.text_config.is_encoder_decoder:  # Flan-T5 variants return only decoder tokens
            return torch.empty((batch, 0), dtype=torch.long)
        if "input_ids" in inputs:  # decoder-only (OPT): the image tokens + prompt come back first
            return inputs["input_ids"].clone()
        # without a prompt generate() starts from num_query_tokens image tokens + BOS
        start = [config.image_token_index] * config.num_query_tokens + [config.text_config.bos_token_id]
        return torch.tensor([start] * batch, dtype=torch.long)
