"""Select From Inversion: some images of an inverted batch, e.g. to invert appearance and structure together
(one model call per step for both) and hand them to the sampler's two inputs."""

from __future__ import annotations

from .common import CATEGORY
from .common import Inversion as InversionSocket
from .compat import io


def parse_indices(text: str) -> list[int]:
    """``"0"``, ``"1, 3"`` or ``"0-2"`` (0-based, ranges inclusive) as a list of indices; ValueError if malformed."""
    indices: list[int] = []
    for part in (piece.strip() for piece in text.split(",")):
        first, _, last = part.partition("-")
        if not first.strip().isdigit() or (last and not last.strip().isdigit()):
            raise ValueError(f"indices {text!r}: use 0-based numbers and ranges such as 0, 1,3 or 0-2")
        start, end = int(first), int(last) if last else int(first)
        if end < start:
            raise ValueError(f"indices {text!r}: the range {part} runs backwards")
        indices.extend(range(start, end + 1))
    return indices


class XAttnSelectInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XAttnSelectInversion",
            display_name="Select From Inversion",
            category=CATEGORY,
            description="Keep some images of an inverted batch. Invert the structure and the appearance image "
            "batched in one Invert Image (DDPM) node, then select 0 for one sampler input and 1 for the other.",
            inputs=[
                InversionSocket.Input("inversion", tooltip="An inversion of a batch of images."),
                io.String.Input(
                    "indices", default="0", tooltip="Which images to keep, 0-based: 0, or 1,3, or 0-2 (in order)."
                ),
            ],
            outputs=[InversionSocket.Output(display_name="inversion")],
        )

    @classmethod
    def validate_inputs(cls, indices: str | None) -> bool | str:
        if indices is None:  # linked from another node: known only when the graph runs
            return True
        try:
            parse_indices(indices)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, inversion, indices: str) -> io.NodeOutput:
        rows = parse_indices(indices)
        outside = [row for row in rows if row >= inversion.batch_size]
        if outside:
            raise ValueError(
                f"indices {indices!r} name image {outside[0]}, but the inversion holds "
                f"{inversion.batch_size} image(s) (0..{inversion.batch_size - 1})"
            )
        return io.NodeOutput(inversion.select(rows))
