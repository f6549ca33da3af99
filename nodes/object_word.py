"""CLIP Text Encode (Object Word): the prompt as CONDITIONING that also says where its object word is.

The automatic masks (the official default) label attention clusters with the object word's cross-attention,
so the sampler needs the word's token positions in the positive prompt. They are found with the model's own
tokenizer, the one whose tokens are the context as each model family declares (``context_tokens``: CLIP's on
SD, T5's on Flux.1, Qwen 3's on Flux.2 klein; multi-token words included), and travel inside the
conditioning, so one node replaces the positive CLIP Text Encode and nothing else in a graph changes.
"""

from __future__ import annotations

from ..xattn_core.segmentation import ObjectWordError, split_words, word_pieces, word_positions
from .common import CATEGORY, engine_warnings, with_warnings_ui
from .compat import io
from .families import context_tokens_of

OBJECT_TOKENS_KEY = "xattn_object_tokens"  # conditioning entry: one tuple of token positions per object word


def _token_strings(tokenizer, token_ids: list) -> list[str]:
    """Readable token strings of one chunk (an embedding's vectors show as '<embedding>')."""
    return [tokenizer.inv_vocab.get(token, "?") if isinstance(token, int) else "<embedding>" for token in token_ids]


def context_tokenizer(clip, tokens: dict):
    """The context's entry of ``tokens`` (:class:`ContextTokens`, declared by each model family) and its tokenizer,
    or None for a text encoder whose tokens the pack cannot map onto the context (Flux.2 dev's Mistral 3)."""
    source = context_tokens_of(tokens)
    if source is None:
        return None
    tokenizer = getattr(clip.tokenizer, source.key, None) or getattr(clip.tokenizer, f"clip_{source.key}")
    return source, tokenizer


def _word_tokens(tokenizer, word: str) -> list[list[str]]:
    """The token runs that spell ``word`` inside a prompt: alone, and after a space (byte-level BPE, as Qwen's,
    folds the space before a word into its first token)."""
    specials = {tokenizer.start_token, tokenizer.end_token, tokenizer.pad_token}
    runs = []
    for text in (word, " " + word):
        ids = [entry[0] for entry in tokenizer.tokenize_with_weights(text)[0]]
        run = word_pieces(_token_strings(tokenizer, [token for token in ids if token not in specials]))
        if run and run not in runs:
            runs.append(run)
    return runs


def object_token_positions(clip, tokens: dict, words: list[str]) -> tuple[tuple[int, ...], ...] | None:
    """Context positions of each of ``words`` in the context ``tokens`` (``clip.tokenize``) encodes to: chunks of
    77 tokens one after another (T5, Qwen: one run), shifted as the family's :class:`ContextTokens` says, or None
    when :func:`context_tokenizer` knows no tokenizer for this text encoder. ObjectWordError names a word the
    prompt lacks and shows the prompt's tokens."""
    context = context_tokenizer(clip, tokens)
    if context is None:
        return None
    source, tokenizer = context
    chunks = [[entry[0] for entry in chunk] for chunk in tokens[source.key]]
    offset = source.offset([token for chunk in chunks for token in chunk])
    found = []
    for word in words:
        positions: set[int] = set()
        errors: list[ObjectWordError] = []
        for word_tokens in _word_tokens(tokenizer, word):
            for index, chunk in enumerate(chunks):
                try:
                    in_chunk = word_positions(_token_strings(tokenizer, chunk), word_tokens, word)
                except ObjectWordError as error:
                    errors.append(error)
                    continue
                positions.update(offset + index * len(chunk) + position for position in in_chunk)
        if not positions:
            raise errors[0]
        found.append(tuple(sorted(positions)))
    return tuple(found)


def object_tokens(conditioning: list) -> tuple[tuple[int, ...], ...] | None:
    """The object word positions a CONDITIONING carries (from this pack's text encoder), or None."""
    for _, extras in conditioning:
        if extras.get(OBJECT_TOKENS_KEY):
            return extras[OBJECT_TOKENS_KEY]
    return None


class XAttnObjectPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XAttnObjectPrompt",
            display_name="CLIP Text Encode (Object Word)",
            category=CATEGORY,
            description="Encode the prompt like CLIP Text Encode, and mark where the object word is in it, so the "
            "Cross-Image Attention Sampler can find the object in both images (automatic masks for AdaIN, the "
            "official default). Use it for the positive prompt of the inversions and the sampler.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the model the transfer uses (Flux: DualCLIPLoader's)."),
                io.String.Input(
                    "text",
                    multiline=True,
                    default="A photo of an animal",
                    tooltip='The prompt; the paper uses "A photo of a <domain>".',
                ),
                io.String.Input(
                    "object_word",
                    default="animal",
                    tooltip="The word that names the object in the prompt (as written there). Several "
                    "words, comma-separated, are all treated as the object.",
                ),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text: str, object_word: str) -> io.NodeOutput:
        words = split_words(object_word)
        if not words:
            raise ValueError("object_word is empty: name the object as the prompt writes it, e.g. giraffe")
        with engine_warnings() as messages:
            tokens = clip.tokenize(text)
            positions = object_token_positions(clip, tokens, words)
            conditioning = clip.encode_from_tokens_scheduled(tokens)
            if positions is None:
                messages.append(
                    f"the object word cannot be found among this text encoder's tokens ({', '.join(tokens)}): the "
                    "prompt is encoded as by CLIP Text Encode, and the sampler gets no automatic object masks "
                    "(connect masks to it, or AdaIN matches the whole images)"
                )
            else:
                conditioning = [
                    [embedding, {**extras, OBJECT_TOKENS_KEY: positions}] for embedding, extras in conditioning
                ]
        return with_warnings_ui(io.NodeOutput(conditioning), messages)
