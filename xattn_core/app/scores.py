"""Optional DINO quality scores for appearance transfers: structure distance and appearance similarity.

Both scores come from one local DINO ViT, a folder in Hugging Face transformers format (for example
``facebook/dino-vitb8`` saved with ``save_pretrained``: a ``ViTModel``). Nothing is downloaded; transformers is
imported only when a model is loaded, so the package stays importable without it.

Preprocessing (:func:`preprocess`): each image is converted to RGB, resized to 512x512, then resized so its short
side is 224 (so 224x224), both with PIL's bilinear filter (antialiased, like the torchvision ``Resize(224)`` Splice
applies), scaled to [0, 1] and normalised with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

Structure distance (:func:`structure_distance`, Splice's structure loss, which Ctrl-X uses to compare methods):
the keys of the last transformer block's self-attention (the output of that layer's key projection, all heads
concatenated, class token included) are taken for the output and the structure image; each image's cosine
self-similarity matrix of its tokens is ``K K^T`` with every token's key vector normalised (``[tokens, tokens]``);
the score is the mean squared difference between the two matrices. Lower means the structure is better kept.
Self-similarity compares an image with itself, so colours and textures cancel and the layout remains.

Appearance similarity (:func:`appearance_similarity`): the cosine similarity of the last layer's class tokens
(``last_hidden_state[:, 0]``, after the final layernorm) of the output and the appearance image. Higher means more
of the appearance was taken. (Splice's own appearance loss hooks the last block's output, before the final
layernorm; the two class tokens differ, so keep one definition when comparing runs.)

For reference: Ctrl-X (Lin et al. 2024) reports 0.145 structure distance / 0.651 appearance similarity for
Cross-Image Attention on natural image pairs with DINO ViT-B/8. Scores from other DINO sizes (ViT-S/8, ViT-B/16,
...) are not comparable with those numbers, and neither are scores of a few pilot pairs with a paper's data set.

Use: the batch command (``python -m xattn_core batch ... --dino PATH``) builds one ``DinoScorer(PATH)`` and calls
``scorer.score(output, structure, appearance)`` once per pair; each call is a single forward pass over 3 images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .diffusers_pipeline import first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WORKING_SIZE = 512
DINO_SIZE = 224

# where a ViT keeps its blocks and each block its key projection, newest transformers layout first:
# transformers 5.x ViTModel: layers[i].attention.k_proj; 4.x: encoder.layer[i].attention.attention.key
_BLOCK_LISTS = ("layers", "encoder.layer", "encoder.layers")
_KEY_PROJECTIONS = ("attention.k_proj", "attention.attention.key", "attention.key", "self_attn.k_proj")


@dataclass(frozen=True)
class PairScores:
    """The two scores of one transfer: lower ``structure_distance`` and higher ``appearance_similarity`` are better."""

    structure_distance: float
    appearance_similarity: float


def preprocess(images: Sequence[Image.Image]) -> Tensor:
    """PIL images as a normalised DINO input batch ``[B, 3, 224, 224]`` (see the module docstring)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    batch = []
    for image in images:
        square = image.convert("RGB").resize((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BILINEAR)
        small = square.resize((DINO_SIZE, DINO_SIZE), Image.Resampling.BILINEAR)  # short side 224 of a square
        pixels = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).permute(2, 0, 1)
        batch.append((pixels - mean) / std)
    if not batch:
        raise ValueError("preprocess needs at least one image")
    return torch.stack(batch)


def self_similarity(keys: Tensor) -> Tensor:
    """Cosine similarity of every token with every other, ``[B, T, D] -> [B, T, T]``."""
    unit = F.normalize(keys.float(), dim=-1)
    return unit @ unit.transpose(-1, -2)


def structure_distance(output_keys: Tensor, structure_keys: Tensor) -> Tensor:
    """Mean squared difference of the two images' key self-similarity matrices, ``[B]`` (0 = same layout)."""
    if output_keys.shape != structure_keys.shape:
        raise ValueError(f"key shapes differ: {tuple(output_keys.shape)} and {tuple(structure_keys.shape)}")
    difference = self_similarity(output_keys) - self_similarity(structure_keys)
    return difference.pow(2).mean(dim=(-2, -1))


def appearance_similarity(output_cls: Tensor, appearance_cls: Tensor) -> Tensor:
    """Cosine similarity of class tokens ``[B, D]``, ``[B]`` (1 = same direction)."""
    if output_cls.shape != appearance_cls.shape:
        raise ValueError(f"class token shapes differ: {tuple(output_cls.shape)} and {tuple(appearance_cls.shape)}")
    return F.cosine_similarity(output_cls.float(), appearance_cls.float(), dim=-1)


def _first_attribute(owner: object, paths: Sequence[str]) -> object | None:
    """The first of the dotted ``paths`` that exists on ``owner`` (module names changed between versions)."""
    for path in paths:
        try:
            return attrgetter(path)(owner)
        except AttributeError:
            continue
    return None


def last_key_projection(model: torch.nn.Module) -> torch.nn.Module:
    """The key projection of a ViT's last block, whichever transformers layout the model uses."""
    blocks = _first_attribute(model, _BLOCK_LISTS)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        places = " / ".join("model." + path for path in _BLOCK_LISTS)
        raise ValueError(f"{type(model).__name__} is not a ViT: no transformer blocks at {places}")
    projection = _first_attribute(blocks[-1], _KEY_PROJECTIONS)
    if not isinstance(projection, torch.nn.Linear):
        raise ValueError(
            f"{type(model).__name__} is not a ViT: its last block has no key projection at "
            f"{' / '.join(_KEY_PROJECTIONS)}"
        )
    return projection


def _load_vit(model_path: Path):
    """``ViTModel.from_pretrained`` from a local folder only, with one-line errors for the usual mistakes."""
    if not model_path.is_dir():
        raise ValueError(f"DINO model folder not found: {model_path}")
    config_file = model_path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{model_path} has no config.json: not a Hugging Face model folder (want e.g. dino-vitb8)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{config_file} is not a readable model config: {error}") from None
    if model_type != "vit":
        raise ValueError(f"{model_path} holds a {model_type!r} model, not a ViT (want a DINO ViT such as dino-vitb8)")
    from transformers import ViTModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a loading bar is noise beside the batch's own progress
    try:
        model, info = ViTModel.from_pretrained(
            model_path, local_files_only=True, add_pooling_layer=False, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"could not load the DINO ViT from {model_path}: {first_line(error)}") from None
    if info.get("missing_keys"):
        # transformers would fill these with random weights, which makes every score meaningless
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{model_path} lacks {len(missing)} ViT weights (first: {missing[0]}); is it a DINO ViT?")
    return model


class DinoScorer:
    """A DINO ViT that scores (output, structure, appearance) triples; see the module docstring."""

    def __init__(self, model_path: str | Path, device: str | torch.device = "cpu") -> None:
        """Loads ``ViTModel.from_pretrained(model_path, local_files_only=True)`` in eval mode.

        A missing folder, or one that does not hold a ViT, raises a one-line ``ValueError``.
        """
        self._setup(_load_vit(Path(model_path)), device)

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: str | torch.device = "cpu") -> DinoScorer:
        """Wrap an in-memory ``ViTModel`` (tests, or a model the caller already holds)."""
        scorer = cls.__new__(cls)
        scorer._setup(model, device)
        return scorer

    def _setup(self, model: torch.nn.Module, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.key_projection = last_key_projection(self.model)
        image_size = getattr(getattr(self.model, "config", None), "image_size", DINO_SIZE)
        # a ViT trained at another resolution needs its position embeddings interpolated to 224
        self._forward_options = {"interpolate_pos_encoding": True} if image_size != DINO_SIZE else {}

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> tuple[Tensor, Tensor]:
        """(last-block keys ``[B, tokens, hidden]``, class tokens ``[B, hidden]``) for a batch, one forward pass."""
        captured: list[Tensor] = []
        hook = self.key_projection.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            pixels = preprocess(images).to(self.device)
            hidden = self.model(pixel_values=pixels, **self._forward_options).last_hidden_state
        finally:
            hook.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the key projection ran {len(captured)} times in one forward pass, expected once")
        return captured[0].float(), hidden[:, 0].float()

    def score(self, output: Image.Image, structure: Image.Image, appearance: Image.Image) -> PairScores:
        """Both scores of one transfer, from a single forward pass over the three images."""
        keys, class_tokens = self.features([output, structure, appearance])
        return PairScores(
            structure_distance=structure_distance(keys[0:1], keys[1:2]).item(),
            appearance_similarity=appearance_similarity(class_tokens[0:1], class_tokens[2:3]).item(),
        )
