"""The node chain every shipped workflow shares (model files, prompts, images, inversions, sampler, outputs)."""

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


class Transfer:
    """The chain every workflow shares: model files, prompts, two images encoded and inverted, the sampler.

    ``guidance``: a FluxGuidance node on the positive prompt (a guidance-distilled model's guidance value).
    """

    def __init__(
        self,
        g: Graph,
        loaders: Loaders,
        images: tuple[str, str],
        size: int,
        object_word: str | None,
        prompt: str,
        save_as: str,
        guidance: float | None = None,
        image_row: int = 440,
    ) -> None:
        self.g, self.save_as, self.loaders = g, save_as, loaders
        self.rows = {"structure": image_row, "appearance": image_row + 440}
        if object_word:
            self.positive = g.add(
                "XAttnObjectPrompt", (360, 0), "Prompt (positive) and object word", text=prompt, object_word=object_word
            )
        else:
            self.positive = g.add("CLIPTextEncode", (360, 0), "Prompt (positive)", text=prompt)
        self.negative = g.add("CLIPTextEncode", (360, 220), "Prompt (negative)", text="")
        for prompt_node in (self.positive, self.negative):
            g.link(*loaders.clip, prompt_node, "clip")
        if guidance is not None:
            self.prompt = self.positive
            self.positive = g.add("FluxGuidance", (720, 0), "Guidance (Flux)", guidance=guidance)
            g.link(self.prompt, 0, self.positive, "conditioning")
        self.pixels: dict[str, Node] = {}
        self.inversions: dict[str, Node] = {}
        for role, image in zip(("structure", "appearance"), images, strict=True):
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
        for name, source in (("model", self.loaders.model), ("positive", positive), ("negative", negative)):
            self.g.link(*source, sampler, name)
        self.sampler = sampler
        return sampler

    def encode(self, role: str, pixels: Node | None = None) -> Node:
        encode = self.g.add("VAEEncode", (720, self.rows[role]))
        self.g.link(pixels or self.pixels[role], "IMAGE", encode, "pixels")
        self.g.link(*self.loaders.vae, encode, "vae")
        return encode

    def invert(self, role: str, latent: Node, **values) -> Node:
        invert = self.g.add("XAttnInvertImage", (1080, self.rows[role]), f"Invert {role}", **values)
        for name, source in (
            ("model", self.loaders.model),
            ("latent", (latent, 0)),
            ("positive", (self.positive, 0)),
            ("negative", (self.negative, 0)),
        ):
            self.g.link(*source, invert, name)
        self.g.link(invert, 0, self.sampler, role)
        self.inversions[role] = invert
        return invert

    def invert_both(self, **values) -> None:
        for role in ("structure", "appearance"):
            self.invert(role, self.encode(role), **values)

    def decode(
        self, latent: tuple[Node, int | str], target: str, pos: tuple[int, int], title: str | None = None, **values
    ) -> tuple[Node, Node]:
        """VAE Decode of ``latent`` into a ``target`` node (Save Image, Preview Image); returns both."""
        decode = self.g.add("VAEDecode", pos)
        self.g.link(*latent, decode, "samples")
        self.g.link(*self.loaders.vae, decode, "vae")
        shown = self.g.add(target, (pos[0] + 360, pos[1]), title, **values)
        self.g.link(decode, 0, shown, "images")
        return decode, shown

    def save(self, x: int = 1880) -> None:
        self.decode((self.sampler, "output"), "SaveImage", (x, 0), "Transfer result", filename_prefix=self.save_as)

    def preview_masks(self, sampler: Node, x: int, y: int) -> None:
        for slot, role in ((3, "appearance"), (4, "structure")):
            preview = self.g.add("MaskPreview", (x, y + (slot - 3) * 380), f"{role.capitalize()} mask (used by AdaIN)")
            self.g.link(sampler, slot, preview, "mask")
