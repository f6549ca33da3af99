"""Cross-Image Attention Options: the sampler's advanced step ranges, attention memory budget, and which blocks of a
transformer model swap."""

from __future__ import annotations

from ..xattn_core.joint_attention import STREAM_BLOCKS_DEFAULT, ContrastScope, JointSwapSettings, RopeMode
from ..xattn_core.plan import PlanSettings
from ..xattn_core.settings import value_range
from ..xattn_core.transfer import TransferSettings
from .common import CATEGORY, CheckedCombo, Options, setting_input
from .compat import io
from .joint_transformer import JOINT_OPTIONS_KEY

DEFAULTS = JointSwapSettings()


class XAttnOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = PlanSettings()
        (l0_start, l0_end), (l1_start, l1_end) = defaults.level_ranges
        low_memory, high_memory = value_range(TransferSettings, "memory_budget")

        def fraction(name, value, tooltip, optional=False):
            return io.Float.Input(name, default=value, min=0.0, max=1.0, step=0.01, tooltip=tooltip, optional=optional)

        def blocks(kind: str, edge: str, value: float) -> io.Float.Input:
            return fraction(
                f"flux_{kind}_blocks_{edge}",
                value,
                f"Flux only, kept for saved workflows: {edge} of the {kind} blocks that swap, as a fraction of "
                "their number ([start, end)). Changed from its default, these four replace swap_depth.",
                optional=True,  # prompts saved before these inputs existed still validate
            )

        return io.Schema(
            node_id="XAttnOptions",
            display_name="Cross-Image Attention Options",
            category=CATEGORY,
            description="Advanced step ranges of the Cross-Image Attention Sampler, as fractions of the schedule "
            "length counted from the start step (at 100 steps: 0.10 = 10 steps), and which part of a transformer "
            "model (Flux.1, Flux.2) swaps. Defaults are the paper's (on Flux: single blocks follow level 0's "
            "steps, double blocks level 1's).",
            inputs=[
                fraction("level0_start", l0_start, "Highest-resolution decoder level: first step that swaps."),
                fraction("level0_end", l0_end, "Highest-resolution decoder level: step where swapping stops."),
                fraction("level1_start", l1_start, "Second decoder level: first step that swaps."),
                fraction("level1_end", l1_end, "Second decoder level: step where swapping stops."),
                setting_input(
                    io.Int,
                    PlanSettings,
                    "structure_kv_every",
                    tooltip="On every this-many-th step (counted as the official code does) the output attends to "
                    "the structure instead of the appearance, which keeps the layout. 5 = the paper's share, 1 "
                    "swapping step in 5, at any number of steps.",
                ),
                fraction("structure_kv_end", defaults.structure_kv_end, "No structure keys/values after this."),
                fraction("adain_start", defaults.adain_range[0], "First step after which AdaIN runs."),
                fraction("adain_end", defaults.adain_range[1], "Step after which AdaIN stops."),
                io.Int.Input(
                    "attention_memory_mb",
                    default=TransferSettings().memory_budget // 2**20,
                    min=low_memory // 2**20,
                    max=high_memory // 2**20,
                    tooltip="Budget for the explicit attention weights of swapped rows (computed in query blocks).",
                ),
                blocks("double", "start", STREAM_BLOCKS_DEFAULT[0][0]),
                blocks("double", "end", STREAM_BLOCKS_DEFAULT[0][1]),
                blocks("single", "start", STREAM_BLOCKS_DEFAULT[1][0]),
                blocks("single", "end", STREAM_BLOCKS_DEFAULT[1][1]),
                CheckedCombo(
                    "flux_rope",  # its first name, which saved prompts use; it applies to every transformer family
                    display_name="rope",
                    options=[mode.value for mode in RopeMode],
                    default=DEFAULTS.rope.value,
                    optional=True,
                    tooltip="Transformer models: the source keys' positions. keep = their own (measured best on the "
                    "tiny Flux), none = no position for the swapped queries and keys, offset = where the model puts "
                    "a reference image (Flux Kontext's index 1, Flux.2's 10).",
                ),
                fraction(
                    "swap_depth_start",
                    DEFAULTS.depth[0],
                    "Transformer models: where the swapping blocks start, as a fraction of the model's blocks in "
                    "depth order (Flux: double blocks, then single blocks). Default: the last third (Flux.1: the "
                    "second half of its single blocks).",
                    optional=True,
                ),
                fraction(
                    "swap_depth_end",
                    DEFAULTS.depth[1],
                    "Transformer models: where the swapping blocks end ([start, end); a block counts by its centre).",
                    optional=True,
                ),
                CheckedCombo(
                    "contrast_scope",
                    options=[scope.value for scope in ContrastScope],
                    default=DEFAULTS.contrast_scope.value,
                    optional=True,
                    tooltip="Transformer models: what the contrast sharpens in a swapped image query's attention. "
                    "image = the source's image keys only, around their own mean, the text keeping its ordinary "
                    "weight (as the UNet's separate text attention); row = the whole row, text included (the "
                    "pack's results before this option); measured in README, section Flux.",
                ),
            ],
            outputs=[Options.Output(display_name="options")],
        )

    @classmethod
    def execute(
        cls,
        level0_start,
        level0_end,
        level1_start,
        level1_end,
        structure_kv_every,
        structure_kv_end,
        adain_start,
        adain_end,
        attention_memory_mb,
        flux_double_blocks_start=STREAM_BLOCKS_DEFAULT[0][0],
        flux_double_blocks_end=STREAM_BLOCKS_DEFAULT[0][1],
        flux_single_blocks_start=STREAM_BLOCKS_DEFAULT[1][0],
        flux_single_blocks_end=STREAM_BLOCKS_DEFAULT[1][1],
        flux_rope=DEFAULTS.rope.value,
        swap_depth_start=DEFAULTS.depth[0],
        swap_depth_end=DEFAULTS.depth[1],
        contrast_scope=DEFAULTS.contrast_scope.value,
    ):
        plan = PlanSettings(
            level_ranges=((level0_start, level0_end), (level1_start, level1_end)),
            structure_kv_every=structure_kv_every,
            structure_kv_end=structure_kv_end,
            adain_range=(adain_start, adain_end),
        )
        stream_blocks = (
            (flux_double_blocks_start, flux_double_blocks_end),
            (flux_single_blocks_start, flux_single_blocks_end),
        )
        blocks = JointSwapSettings(  # checks start <= end here, on this node, not later in the sampler
            depth=(swap_depth_start, swap_depth_end),
            rope=RopeMode(flux_rope),
            stream_blocks=None if stream_blocks == STREAM_BLOCKS_DEFAULT else stream_blocks,  # a saved prompt's
            contrast_scope=ContrastScope(contrast_scope),
        )
        memory_budget = attention_memory_mb * 2**20
        return io.NodeOutput({"plan": plan, "memory_budget": memory_budget, JOINT_OPTIONS_KEY: blocks})
