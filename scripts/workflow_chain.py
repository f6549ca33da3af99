"""The node chain the shipped workflows share (model files, prompts, images, inversions, sampler, outputs) and the
loaders of each model family. The workflow descriptions (scripts/workflow_specs/) are built from these."""

from __future__ import annotations

from dataclasses import dataclass

from workflow_graph import Graph, Node

Source = tuple[Node, int | str]  # a node's output


@dataclass(frozen=True)
class Loaders:
    """Where the chain's MODEL, CLIP and VAE come from."""

    model: Source
    clip: Source
    vae: Source


@dataclass(frozen=True)
class InputPair:
    """The two images a workflow loads (file names in ComfyUI's input/), the prompt that describes them, the object
    word the automatic masks look for, and the note paragraph that says how to put the images in input/."""

    structure: str
    appearance: str
    prompt: str
    object_word: str
    note: str


def checkpoint_loader(g: Graph, name: str) -> Loaders:
    """One checkpoint file (SD 1.x, SDXL) holds all three."""
    checkpoint = g.add("CheckpointLoaderSimple", (0, 0), ckpt_name=name)
    return Loaders((checkpoint, "MODEL"), (checkpoint, "CLIP"), (checkpoint, "VAE"))


def flux_loaders(g: Graph, unet: str, text_encoders: tuple[str, str], vae: str) -> Loaders:
    """Flux ships as separate files, loaded as ComfyUI's own Flux examples load them."""
    model = g.add("UNETLoader", (0, 0), "Load Flux model", unet_name=unet)
    clip = g.add(
        "DualCLIPLoader",
        (0, 140),
        "Load Flux text encoders",
        clip_name1=text_encoders[0],
        clip_name2=text_encoders[1],
        type="flux",
    )
    autoencoder = g.add("VAELoader", (0, 320), "Load Flux VAE", vae_name=vae)
    return Loaders((model, 0), (clip, 0), (autoencoder, 0))


def single_encoder_loaders(
    g: Graph, family: str, unet: str, text_encoder: tuple[str, str], vae: str, shift: float | None = None
) -> Loaders:
    """Flux.2, Qwen-Image and Z-Image: a model, one text encoder (``text_encoder``: its file and CLIPLoader's
    ``type`` for it) and a VAE, loaded as ComfyUI's own templates for them load them. ``shift``: the
    ModelSamplingAuraFlow the template puts on the model, which the pack's nodes then take (their schedule is the
    model's own sampling, so the inversions follow the shift too)."""
    model = g.add("UNETLoader", (0, 0), f"Load {family} model", unet_name=unet)
    clip = g.add("CLIPLoader", (0, 140), f"Load {family} text encoder", clip_name=text_encoder[0], type=text_encoder[1])
    autoencoder = g.add("VAELoader", (0, 320), f"Load {family} VAE", vae_name=vae)
    if shift is None:
        return Loaders((model, 0), (clip, 0), (autoencoder, 0))
    sampling = g.add("ModelSamplingAuraFlow", (0, 440), f"Shift ({family}'s template)", shift=shift)
    g.link(model, 0, sampling, "model")
    return Loaders((sampling, 0), (clip, 0), (autoencoder, 0))


def prompt_nodes(g: Graph, clip: Source, text: str, object_word: str | None = None) -> tuple[Node, Node]:
    """The positive prompt (with the object word of the automatic masks, if any) and an empty negative one."""
    if object_word:
        positive = g.add(
            "XAttnObjectPrompt", (360, 0), "Prompt (positive) and object word", text=text, object_word=object_word
        )
    else:
        positive = g.add("CLIPTextEncode", (360, 0), "Prompt (positive)", text=text)
    negative = g.add("CLIPTextEncode", (360, 220), "Prompt (negative)", text="")
    for prompt in (positive, negative):
        g.link(*clip, prompt, "clip")
    return positive, negative


def decode(
    g: Graph, vae: Source, latent: Source, target: str, pos: tuple[int, int], title: str | None = None, **values
) -> tuple[Node, Node]:
    """VAE Decode of ``latent`` into a ``target`` node (Save Image, Preview Image) to its right; returns both."""
    decoder = g.add("VAEDecode", pos)
    g.link_inputs(decoder, samples=latent, vae=vae)
    shown = g.add(target, (pos[0] + 360, pos[1]), title, **values)
    g.link(decoder, 0, shown, "images")
    return decoder, shown


class Transfer:
    """The chain most workflows share: model files, prompts, two images encoded and inverted, the sampler.

    ``object_masks``: the positive prompt carries the pair's object word, for the automatic object masks.
    ``guidance``: a FluxGuidance node on the positive prompt (a guidance-distilled model's guidance value).
    ``image_row``: the y of the structure image's row (the appearance's is 440 below).
    """

    def __init__(
        self,
        g: Graph,
        loaders: Loaders,
        inputs: InputPair,
        size: int,
        save_as: str,
        *,
        object_masks: bool,
        guidance: float | None = None,
        image_row: int = 440,
    ) -> None:
        self.g, self.save_as, self.loaders = g, save_as, loaders
        self.rows = {"structure": image_row, "appearance": image_row + 440}
        object_word = inputs.object_word if object_masks else None
        self.positive, self.negative = prompt_nodes(g, loaders.clip, inputs.prompt, object_word)
        if guidance is not None:
            self.prompt = self.positive
            self.positive = g.add("FluxGuidance", (720, 0), "Guidance (Flux)", guidance=guidance)
            g.link(self.prompt, 0, self.positive, "conditioning")
        self.pixels: dict[str, Node] = {}
        self.inversions: dict[str, Node] = {}
        for role, image in (("structure", inputs.structure), ("appearance", inputs.appearance)):
            y = self.rows[role]
            load = g.add("LoadImage", (0, y), f"{role.capitalize()} image", image=image)
            self.pixels[role] = g.add(
                "ImageScale",
                (360, y),
                f"Resize {role}",
                upscale_method="lanczos",
                width=size,
                height=size,
                crop="center",
            )
            g.link(load, "IMAGE", self.pixels[role], "image")

    def sample(self, x: int = 1480, conditioning=None, title: str | None = None, **values) -> Node:
        """The sampler; its prompts are the chain's own unless ``conditioning`` ((node, output) for positive and
        for negative) replaces them."""
        sampler = self.g.add("XAttnCrossImageSampler", (x, 0), title, **values)
        positive, negative = conditioning or ((self.positive, 0), (self.negative, 0))
        self.g.link_inputs(sampler, model=self.loaders.model, positive=positive, negative=negative)
        self.sampler = sampler
        return sampler

    def encode(self, role: str, pixels: Node | None = None) -> Node:
        encode = self.g.add("VAEEncode", (720, self.rows[role]))
        self.g.link_inputs(encode, pixels=(pixels or self.pixels[role], "IMAGE"), vae=self.loaders.vae)
        return encode

    def invert(self, role: str, latent: Node, **values) -> Node:
        invert = self.g.add("XAttnInvertImage", (1080, self.rows[role]), f"Invert {role}", **values)
        self.g.link_inputs(
            invert,
            model=self.loaders.model,
            latent=(latent, 0),
            positive=(self.positive, 0),
            negative=(self.negative, 0),
        )
        self.g.link(invert, 0, self.sampler, role)
        self.inversions[role] = invert
        return invert

    def invert_both(self, **values) -> None:
        for role in ("structure", "appearance"):
            self.invert(role, self.encode(role), **values)

    def decode(
        self, latent: Source, target: str, pos: tuple[int, int], title: str | None = None, **values
    ) -> tuple[Node, Node]:
        """VAE Decode of ``latent`` into a ``target`` node (Save Image, Preview Image); returns both."""
        return decode(self.g, self.loaders.vae, latent, target, pos, title, **values)

    def save(self, x: int = 1880) -> None:
        self.decode((self.sampler, "output"), "SaveImage", (x, 0), "Transfer result", filename_prefix=self.save_as)

    def sample_invert_save(self, sampler_values: dict | None = None, inversion_values: dict | None = None) -> Node:
        """The plain transfer: the sampler, both images inverted into it, the result saved; returns the sampler."""
        sampler = self.sample(**(sampler_values or {}))
        self.invert_both(**(inversion_values or {}))
        self.save()
        return sampler

    def preview_masks(self, sampler: Node, x: int, y: int) -> None:
        for slot, role in ((3, "appearance"), (4, "structure")):
            preview = self.g.add("MaskPreview", (x, y + (slot - 3) * 380), f"{role.capitalize()} mask (used by AdaIN)")
            self.g.link(sampler, slot, preview, "mask")
