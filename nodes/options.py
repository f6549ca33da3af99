"""Cross-Image Attention Options: the sampler's advanced step ranges, attention memory budget and Flux blocks."""

from __future__ import annotations

from ..xattn_core.joint_attention import JointSwapSettings, RopeMode
from ..xattn_core.plan import PlanSettings
from ..xattn_core.settings import value_range
from ..xattn_core.transfer import TransferSettings
from .common import CATEGORY, CheckedCombo, Options, setting_input
from .compat import io
from .flux_family import FLUX_OPTIONS_KEY

FLUX_DEFAULTS = JointSwapSettings()


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
                f"Flux only: {edge} of the {kind} blocks that swap, as a fraction of their number ([start, end)).",
                optional=True,  # prompts saved before these inputs existed still validate
            )

        return io.Schema(
            node_id="XAttnOptions",
            display_name="Cross-Image Attention Options",
            category=CATEGORY,
            description="Advanced step ranges of the Cross-Image Attention Sampler, as fractions of the schedule "
            "length counted from the start step (at 100 steps: 0.10 = 10 steps), and which Flux blocks swap. "
            "Defaults are the paper's (on Flux: single blocks follow level 0's steps, double blocks level 1's).",
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
                blocks("double", "start", FLUX_DEFAULTS.double_blocks[0]),
                blocks("double", "end", FLUX_DEFAULTS.double_blocks[1]),
                blocks("single", "start", FLUX_DEFAULTS.single_blocks[0]),
                blocks("single", "end", FLUX_DEFAULTS.single_blocks[1]),
                CheckedCombo(
                    "flux_rope",
                    options=[mode.value for mode in RopeMode],
                    default=FLUX_DEFAULTS.rope.value,
                    optional=True,
                    tooltip="Flux only: the appearance keys' positions. keep = their own (measured best on the "
                    "tiny model), none = no position for the swapped queries and keys, offset = Flux Kontext's "
                    "reference index.",
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
        flux_double_blocks_start=FLUX_DEFAULTS.double_blocks[0],
        flux_double_blocks_end=FLUX_DEFAULTS.double_blocks[1],
        flux_single_blocks_start=FLUX_DEFAULTS.single_blocks[0],
        flux_single_blocks_end=FLUX_DEFAULTS.single_blocks[1],
        flux_rope=FLUX_DEFAULTS.rope.value,
    ):
        plan = PlanSettings(
            level_ranges=((level0_start, level0_end), (level1_start, level1_end)),
            structure_kv_every=structure_kv_every,
            structure_kv_end=structure_kv_end,
            adain_range=(adain_start, adain_end),
        )
        flux_blocks = JointSwapSettings(  # checks start <= end here, on this node, not later in the sampler
            double_blocks=(flux_double_blocks_start, flux_double_blocks_end),
            single_blocks=(flux_single_blocks_start, flux_single_blocks_end),
            rope=RopeMode(flux_rope),
        )
        memory_budget = attention_memory_mb * 2**20
        return io.NodeOutput({"plan": plan, "memory_budget": memory_budget, FLUX_OPTIONS_KEY: flux_blocks})
