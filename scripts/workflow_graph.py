"""A small builder for ComfyUI workflows: nodes and links in Python, written out as the front end's UI format and
as the API-format twin, with every widget in the order and form ComfyUI's /object_info describes.

Used by scripts/build_workflows.py; the tests check the files it writes (tests/test_workflows_static.py) and
open them in the real front end (tests/browser).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}  # the front end adds "control after generate" to these INTs as well
IMAGE_NODES = {"LoadImage", "SaveImage", "PreviewImage", "MaskPreview"}  # they show an image: taller
NOTE_COLOURS = {"color": "#432", "bgcolor": "#653"}
NOTE_SIZE = [440, 760]  # tall: the note sits left of the whole chain, and shows most of its text unscrolled
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos
GAP = 20  # the least space kept between two nodes
# The view a workflow opens at (its extra.ds): the Read me note and the transfer sampler(s) on screen, as large as
# fits the graph canvas of a 1920 x 1080 screen (the front end's menu, tabs and side bar take the rest), and never
# so small that node text is unreadable.
FIRST_VIEW_NODES = {"MarkdownNote", "XAttnCrossImageSampler"}
FIRST_VIEW_PIXELS = (1700, 860)
FIRST_VIEW_MARGIN = 30  # pixels around them
FIRST_VIEW_SCALES = (0.6, 0.8)  # below 0.6 widget text is too small to read; above 0.8 less of the chain shows


def _kind(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) or spec[0] == "COMBO" else spec[0]


def _is_widget(spec: list) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return _kind(spec) in WIDGET_TYPES and not options.get("forceInput", False)


@dataclass
class Node:
    id: int
    type: str
    title: str | None
    pos: tuple[int, int]
    values: dict
    text: str | None = None  # MarkdownNote only
    inputs: dict[str, int] = field(default_factory=dict)  # socket name -> link id
    outputs: dict[int, list[int]] = field(default_factory=dict)  # output slot -> link ids


class Graph:
    """One workflow. ``add`` a node with its widget values by name (the rest take their defaults), ``link`` an
    output to an input, ``write`` both formats."""

    def __init__(self, object_info: dict, model_sources: dict[str, tuple[str, str]] | None = None) -> None:
        self.info = object_info
        self.model_sources = model_sources or {}  # file name -> (models/ folder, download address)
        self.nodes: list[Node] = []
        self.links: list[list] = []

    def note(self, text: str, pos=(-480, 0)) -> Node:
        node = Node(len(self.nodes) + 1, "MarkdownNote", "Read me", pos, {}, text=text)
        self.nodes.append(node)
        return node

    def add(self, node_type: str, pos: tuple[int, int], title: str | None = None, **values) -> Node:
        if node_type not in self.info:
            raise KeyError(f"ComfyUI reports no node type {node_type}")
        unknown = set(values) - set(self._specs(node_type))
        if unknown:
            raise KeyError(f"{node_type} has no inputs {sorted(unknown)}")
        node = Node(len(self.nodes) + 1, node_type, title, pos, values)
        self.nodes.append(node)
        return node

    def link(self, source: Node, output: int | str, target: Node, name: str) -> None:
        names = self.info[source.type].get("output_name") or self.info[source.type]["output"]
        slot = output if isinstance(output, int) else list(names).index(output)
        if name not in self._specs(target.type) or _is_widget(self._specs(target.type)[name]):
            raise KeyError(f"{target.type} has no socket {name}")
        link_id = len(self.links) + 1
        self.links.append(
            [
                link_id,
                source.id,
                slot,
                target.id,
                self._sockets(target.type).index(name),
                self.info[source.type]["output"][slot],
            ]
        )
        source.outputs.setdefault(slot, []).append(link_id)
        target.inputs[name] = link_id

    def link_inputs(self, target: Node, **sources: tuple[Node, int | str]) -> None:
        """``link`` each (node, output) in ``sources`` to ``target``'s input of that name, in the order given."""
        for name, (source, output) in sources.items():
            self.link(source, output, target, name)

    # -- schema helpers ----------------------------------------------------------------------------------------

    def _specs(self, node_type: str) -> dict[str, list]:
        info = self.info[node_type]
        specs = {}
        for section in ("required", "optional"):
            group = info["input"].get(section, {})
            for name in info.get("input_order", {}).get(section, list(group)):
                specs[name] = group[name] + ([] if len(group[name]) > 1 else [{}])
                specs[name][1] = {**specs[name][1], "_optional": section == "optional"}
        return specs

    def _sockets(self, node_type: str) -> list[str]:
        return [name for name, spec in self._specs(node_type).items() if not _is_widget(spec)]

    def _widgets(self, node: Node) -> dict:
        """The node's widget values by name, in widget order (the defaults where ``add`` named none)."""
        widgets = {}
        for name, spec in self._specs(node.type).items():
            if _is_widget(spec):
                options = spec[1]
                choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
                widgets[name] = node.values.get(name, options.get("default", choices[0] if choices else None))
        return widgets

    def _widget_values(self, node: Node) -> list:
        """The UI format's ``widgets_values``: the widgets in order, plus the front end's extra entries."""
        values = []
        specs = self._specs(node.type)
        for name, value in self._widgets(node).items():
            values.append(value)
            options = specs[name][1]
            if _kind(specs[name]) == "INT" and (options.get("control_after_generate") or name in SEED_NAMES):
                values.append("fixed")  # control after generate
            if options.get("image_upload"):
                values.append("image")  # the upload button
        return values

    def _size(self, node: Node) -> list[int]:
        if node.type == "MarkdownNote":
            return list(NOTE_SIZE)
        specs = self._specs(node.type)
        widgets = sum(_is_widget(spec) for spec in specs.values())
        rows = max(len(self._sockets(node.type)), len(self.info[node.type]["output"]))
        height = 46 + 22 * rows + 26 * widgets + (300 if node.type in IMAGE_NODES else 0)
        return [400 if node.type in ("CLIPTextEncode", "XAttnObjectPrompt") else 320, height]

    def _settled(self) -> dict[int, list[int]]:
        """Each node's position, moved down where it would overlap a node above it (title bars included, GAP
        apart), so a workflow never opens with one node covering another's title or widgets. Nodes are placed in
        order of their top edge; ``pos`` in ``add`` is where a node goes when nothing is in the way."""
        placed: list[tuple[int, int, int, int]] = []  # left, top, right, bottom (title bar included)
        positions = {}
        for node in sorted(self.nodes, key=lambda node: (node.pos[1], node.pos[0])):
            (x, y), (width, height) = node.pos, self._size(node)
            blocked = True
            while blocked:
                blocked = False
                for left, top, right, bottom in placed:
                    if (
                        x < right + GAP
                        and left < x + width + GAP
                        and y - TITLE_HEIGHT < bottom + GAP
                        and top < y + height + GAP
                    ):
                        y, blocked = bottom + GAP + TITLE_HEIGHT, True
            placed.append((x, y - TITLE_HEIGHT, x + width, y + height))
            positions[node.id] = [x, y]
        return positions

    def first_view(self, positions: dict[int, list[int]]) -> dict:
        """extra.ds: the scale and offset that show the note and the sampler(s) at the top left, as large as
        FIRST_VIEW_PIXELS allows (the front end draws a canvas point p at (p + offset) * scale)."""
        shown = [node for node in self.nodes if node.type in FIRST_VIEW_NODES]
        boxes = []  # left, top (title bar included), right, bottom
        for node in shown:
            (x, y), (node_width, node_height) = positions[node.id], self._size(node)
            boxes.append((x, y - TITLE_HEIGHT, x + node_width, y + node_height))
        left, top = min(box[0] for box in boxes), min(box[1] for box in boxes)
        right, bottom = max(box[2] for box in boxes), max(box[3] for box in boxes)
        width, height = (pixels - 2 * FIRST_VIEW_MARGIN for pixels in FIRST_VIEW_PIXELS)
        low, high = FIRST_VIEW_SCALES
        scale = min(high, width / (right - left), height / (bottom - top))
        if scale < low:
            raise ValueError(
                f"the note and the sampler(s) span {right - left} x {bottom - top}: they fit the first view only at "
                f"{scale:.2f}, below {low}; place them closer"
            )
        scale = round(scale, 3)
        offset = [round(FIRST_VIEW_MARGIN / scale - left, 1), round(FIRST_VIEW_MARGIN / scale - top, 1)]
        return {"scale": scale, "offset": offset}

    # -- output --------------------------------------------------------------------------------------------------

    def _order(self) -> dict[int, int]:
        """Each node's position in a topological order (the front end's execution order)."""
        sources = {node.id: {self.links[link - 1][1] for link in node.inputs.values()} for node in self.nodes}
        order: dict[int, int] = {}
        while len(order) < len(self.nodes):
            for node in self.nodes:
                if node.id not in order and sources[node.id] <= set(order):
                    order[node.id] = len(order)
        return order

    def ui(self) -> dict:
        order, positions = self._order(), self._settled()
        nodes = []
        for node in self.nodes:
            entry = {
                "id": node.id,
                "type": node.type,
                "pos": positions[node.id],
                "size": self._size(node),
                "flags": {},
                "order": order[node.id],
                "mode": 0,
            }
            if node.type == "MarkdownNote":
                entry.update(
                    inputs=[], outputs=[], title=node.title, properties={}, widgets_values=[node.text], **NOTE_COLOURS
                )
                nodes.append(entry)
                continue
            specs = self._specs(node.type)
            entry["inputs"] = [
                {
                    "name": name,
                    "type": _kind(specs[name]),
                    "link": node.inputs.get(name),
                    **({"shape": 7} if specs[name][1]["_optional"] else {}),
                }
                for name in self._sockets(node.type)
            ]
            names = self.info[node.type].get("output_name") or self.info[node.type]["output"]
            entry["outputs"] = [
                {"name": name, "type": kind, "links": node.outputs.get(slot, []), "slot_index": slot}
                for slot, (name, kind) in enumerate(zip(names, self.info[node.type]["output"], strict=True))
            ]
            entry["properties"] = {"Node name for S&R": node.type}
            models = [
                {"name": value, "url": self.model_sources[value][1], "directory": self.model_sources[value][0]}
                for value in self._widgets(node).values()
                if isinstance(value, str) and value in self.model_sources
            ]
            if models:  # the front end's Missing Models dialog reads these
                entry["properties"]["models"] = models
            entry["widgets_values"] = self._widget_values(node)
            if node.title:
                entry["title"] = node.title
            nodes.append(entry)
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": self.first_view(positions)},
            "version": 0.4,
        }

    def api(self) -> dict:
        prompt = {}
        for node in self.nodes:
            if node.type == "MarkdownNote":
                continue
            inputs = {}
            widgets = self._widgets(node)
            for name in self._specs(node.type):
                if name in widgets:
                    inputs[name] = widgets[name]
                elif name in node.inputs:
                    link = self.links[node.inputs[name] - 1]
                    inputs[name] = [str(link[1]), link[2]]
            title = node.title or self.info[node.type].get("display_name", node.type)
            prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": title}}
        return prompt

    def write(self, folder: Path, name: str) -> None:
        (folder / f"{name}.json").write_text(json.dumps(self.ui(), indent=1, ensure_ascii=False) + "\n")
        (folder / "api" / f"{name}.json").write_text(json.dumps(self.api(), indent=1, ensure_ascii=False) + "\n")
