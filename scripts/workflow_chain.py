"""The node chain every shipped workflow shares (checkpoint, prompts, images, inversions, sampler, outputs)."""

from __future__ import annotations

from workflow_graph import Graph, Node


class Transfer:
    """The chain every workflow shares: checkpoint, prompts, two images encoded and inverted, the sampler."""

    def __init__(
        self,
        g: Graph,
        checkpoint: str,
        images: tuple[str, str],
        size: int,
        object_word: str | None,
        prompt: str,
        save_as: str,
    ) -> None:
        self.g, self.save_as = g, save_as
        self.checkpoint = g.add("CheckpointLoaderSimple", (0, 0), ckpt_name=checkpoint)
        if object_word:
            self.positive = g.add(
                "XAttnObjectPrompt", (360, 0), "Prompt (positive) and object word", text=prompt, object_word=object_word
            )
        else:
            self.positive = g.add("CLIPTextEncode", (360, 0), "Prompt (positive)", text=prompt)
        self.negative = g.add("CLIPTextEncode", (360, 220), "Prompt (negative)", text="")
        for prompt_node in (self.positive, self.negative):
            g.link(self.checkpoint, "CLIP", prompt_node, "clip")
        self.pixels: dict[str, Node] = {}
        self.inversions: dict[str, Node] = {}
        for role, image, y in (("structure", images[0], 440), ("appearance", images[1], 880)):
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
        for name, source in (("model", (self.checkpoint, "MODEL")), ("positive", positive), ("negative", negative)):
            self.g.link(*source, sampler, name)
        self.sampler = sampler
        return sampler

    def encode(self, role: str, pixels: Node | None = None) -> Node:
        encode = self.g.add("VAEEncode", (720, 440 if role == "structure" else 880))
        self.g.link(pixels or self.pixels[role], "IMAGE", encode, "pixels")
        self.g.link(self.checkpoint, "VAE", encode, "vae")
        return encode

    def invert(self, role: str, latent: Node) -> Node:
        invert = self.g.add("XAttnInvertImage", (1080, 440 if role == "structure" else 880), f"Invert {role}")
        for name, source in (
            ("model", (self.checkpoint, "MODEL")),
            ("latent", (latent, 0)),
            ("positive", (self.positive, 0)),
            ("negative", (self.negative, 0)),
        ):
            self.g.link(*source, invert, name)
        self.g.link(invert, 0, self.sampler, role)
        self.inversions[role] = invert
        return invert

    def invert_both(self) -> None:
        for role in ("structure", "appearance"):
            self.invert(role, self.encode(role))

    def decode(
        self, latent: tuple[Node, int | str], target: str, pos: tuple[int, int], title: str | None = None, **values
    ) -> tuple[Node, Node]:
        """VAE Decode of ``latent`` into a ``target`` node (Save Image, Preview Image); returns both."""
        decode = self.g.add("VAEDecode", pos)
        self.g.link(*latent, decode, "samples")
        self.g.link(self.checkpoint, "VAE", decode, "vae")
        shown = self.g.add(target, (pos[0] + 360, pos[1]), title, **values)
        self.g.link(decode, 0, shown, "images")
        return decode, shown

    def save(self, x: int = 1880) -> None:
        self.decode((self.sampler, "output"), "SaveImage", (x, 0), "Transfer result", filename_prefix=self.save_as)

    def preview_masks(self, sampler: Node, x: int, y: int) -> None:
        for slot, role in ((3, "appearance"), (4, "structure")):
            preview = self.g.add("MaskPreview", (x, y + (slot - 3) * 380), f"{role.capitalize()} mask (used by AdaIN)")
            self.g.link(sampler, slot, preview, "mask")
