"""The one multi-turn reasoning loop: ``infer``, ``eval`` and Stage 3's rollouts all call it
(``ReasoningLoop.stream``, or ``run`` for a list).

For each (image, question):
1. Turn 1: the paper's reasoning prompt with the image; the model generates (greedy or sampled).
2. When a turn of the model contains ``<|seg|>``: the hidden state computed when ``<|seg|>`` is fed
   back in (the same position training reads, see ``model.seganswer``) goes through the projector
   and SAM 2.1; the mask becomes the sparse-position segmented view (``--roi mask``; ``bbox``, a box
   crop, for comparison), which is appended as the next user turn. The KV cache is continued:
   the original image is never prefilled twice. At most ``max_seg_steps`` such rounds.
   ``--roi none`` is the no-second-look baseline: the model's turn opens with ``<answer>`` (the
   direct-answer format Stage 2 trains beside the segmenting one) and ``<|seg|>`` is never chosen
   (its logit is masked out), so it answers from the first look. Greedy or sampled, the choice
   never falls on a visual placeholder nor on an id the tokenizer does not have (the LM head's
   padding rows past ``len(tokenizer)``). The checkpoint's ``generation_config.json`` (repetition
   penalty, top-k, its sampling defaults) is not used: ``ReasoningSettings`` alone decides
   (``GENERATION_CONFIG_NOTE``).
   ``opening="forced"`` asks every mode the same way, for a like-for-like comparison of the looks:
   the model writes only the answer. ``--roi mask|bbox`` are given Response 1 (``To find the
   answer, it should first observe <|seg|>.``), the mask comes from that ``<|seg|>``'s state (fed as
   the last token of the prompt, so read where a generated one is read), and the turn after the view
   opens with ``<answer>``; ``--roi none`` opens with ``<answer>`` as always. With the default
   ``opening="model"`` the model decides whether to segment (the paper's method; ``none`` still
   opens with ``<answer>``, the only way to ask for no look).
3. Stop at ``</answer>``, ``<|im_end|>`` of a turn without ``<|seg|>``, EOS, or the token limit; the
   answer is ``conversation.answer_of`` of the model's turns (the one rule eval and the rewards use).

An empty mask falls back to the original image (a full-mask view at the original positions) and
is recorded on the step. ``run(..., regions=...)`` replaces the decoded masks by given ones (the
annotated region of each question: ``eval --masks gt``, the oracle-grounding ablation); the model
still decides whether to look.

Batches (continuous batching): ``stream(asks, batch_size)`` keeps up to ``batch_size`` questions in
one batch and yields each trajectory as its row finishes; the row leaves the KV cache at once and the
next queued question takes its place. Every step feeds each row what it has not fed yet: the rows
decoding one token run as one forward on the cache; the rows with a longer chunk (a new question's
prompt, a segmented turn) as a second forward, left-padded among themselves only, so a long chunk never
pads the decoding rows. The two are joined into one cache again (``row_cache.RowCache``: each row's
columns right-aligned, unused columns dropped). Positions are explicit 3-D M-RoPE ids carried by every
token, so padding and moving columns never shift them. SAM 2.1 runs once per step for every row that
asks for a mask then (one stacked encoder call for the images not encoded yet, one decoder call per
number of ``<|seg|>`` states). Greedy rows are what they are alone, up to the rounding of batched
kernels (tests/test_reasoning.py checks the tokens equal and the log-probs within 1e-4); a sampled row
draws from its own generator (``row_seed``), so it does not depend on its neighbours either.

``Trajectory.sequence`` is the whole conversation exactly as the model saw it (ids, 3-D positions,
visual slots), with ``target_mask`` marking the tokens the model generated: Stage 3 recomputes
log-probabilities on it and masks its loss with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from seganswer_cli.errors import UsageError
from seganswer_cli.model import conversation, tokens
from seganswer_cli.model.mask_decoder import ImageEmbeddings, binary_masks
from seganswer_cli.model.row_cache import RowCache
from seganswer_cli.model.sequence import Sequence, SequenceBuilder
from seganswer_cli.model.sparse_patches import ROI_MODES, SegmentedView

#: What ``infer`` and ``eval`` print when the MLLM's checkpoint carries generation settings.
GENERATION_CONFIG_NOTE = (
    "the checkpoint's generation_config.json ({settings}) is not used: decoding is greedy, or "
    "--sample at its own temperature and top-p, with no repetition penalty or top-k"
)

#: The fields of a ``GenerationConfig`` that would change what the loop chooses.
_GENERATION_FIELDS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


def generation_config_note(model) -> str | None:
    """The line saying the checkpoint's generation settings are overridden, or None when it sets none
    that differ from plain greedy decoding (a tiny model built in code)."""
    config = getattr(model.mllm, "generation_config", None)
    if config is None:
        return None
    plain = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}
    set_here = {k: getattr(config, k, None) for k in _GENERATION_FIELDS}
    differing = {k: v for k, v in set_here.items() if v is not None and v != plain[k]}
    if not differing:
        return None
    return GENERATION_CONFIG_NOTE.format(settings=", ".join(f"{k}={v}" for k, v in differing.items()))


#: How the model's turns open (``ReasoningSettings.opening``).
OPENINGS = ("model", "forced")


@dataclass
class ReasoningSettings:
    """How the loop generates and looks again."""

    roi: str = "mask"
    """Second look: ``mask`` (sparse segmented patches at original positions), ``bbox`` (box crop,
    fresh positions), ``none`` (no second look: the turn opens with ``<answer>``, given, not
    generated, and ``<|seg|>`` is masked out of every choice, so the model answers from the first
    look; the recorded log-probabilities stay those of the unmasked distribution, as with top-p, so
    a teacher-forced pass over the trajectory reproduces them)."""
    max_seg_steps: int = 1
    """Most ``<|seg|>`` rounds per question; a turn that asks for more ends the trajectory."""
    max_new_tokens: int = 256
    """Most tokens the model may generate per question, all turns together."""
    sample: bool = False
    """Sample (temperature, top-p) instead of greedy decoding."""
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    """Seed of the sampling generator (None: torch's global RNG)."""
    system: str = tokens.DEFAULT_SYSTEM
    opening: str = "model"
    """``model``: the model writes its turns and decides whether to segment; ``forced``: every mode is
    given the words up to the answer (see the module docstring), so the modes differ only in the look."""

    def __post_init__(self):
        if self.roi not in ROI_MODES:
            raise UsageError(f"unknown --roi {self.roi!r}; expected one of {', '.join(ROI_MODES)}")
        if self.opening not in OPENINGS:
            raise UsageError(f"unknown --opening {self.opening!r}; expected one of {', '.join(OPENINGS)}")
        if self.max_seg_steps < 0 or self.max_new_tokens < 1:
            raise UsageError("max_seg_steps must be >= 0 and max_new_tokens >= 1")
        if self.sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise UsageError("sampling needs temperature > 0 and 0 < top_p <= 1")


@dataclass
class SegStep:
    """One ``<|seg|>`` round."""

    mask: np.ndarray | None
    """Bool ``(H, W)`` mask decoded from the ``<|seg|>`` state."""
    iou: float
    object_score: float
    kept_tokens: int
    """Visual tokens of the second look."""
    box: tuple[int, int, int, int] | None
    """``(x0, y0, x1, y1)`` crop box in the original image's pixels."""
    fallback: str | None = None
    """``empty_mask`` when the mask was empty and the original image was shown again."""
    given: bool = False
    """The mask was given (``run(..., regions=...)``), not decoded from the ``<|seg|>`` state."""
    view: SegmentedView | None = field(default=None, repr=False)


@dataclass
class Trajectory:
    """Everything one question produced."""

    question: str
    sequence: Sequence = field(repr=False)
    """The whole conversation as the model saw it; ``target_mask`` = generated tokens."""
    logprobs: torch.Tensor = field(repr=False)
    """``(n_generated,)`` log-probability of each generated token (temperature-scaled logits)."""
    steps: list[SegStep]
    turns: list[str]
    """The model's turns, decoded (special tokens kept, so ``<|seg|>`` shows)."""
    answer: str | None
    answer_source: str
    """Where the answer came from under the one answer rule (``conversation.answer_of``): ``tag``,
    ``unclosed``, ``untagged`` or ``missing``."""
    stop_reason: str
    """``answer``, ``end_of_turn``, ``eos``, ``length`` or ``max_seg_steps``."""
    timings: dict[str, float]
    """Seconds per phase: ``prefill`` (turn 1), ``decode`` (one token per step), ``mask`` (SAM 2.1),
    ``segmented_turn`` (building the view and feeding the new turn), ``total``. A batch shares
    its steps, so each row gets the batch's times divided by the number of rows."""
    answer_reason: str | None = None
    """Without an answer, why (``conversation.NO_ANSWER_REASONS``: ``asks_for_region``, ``empty``,
    ``preamble``, ``broken_tag``); None when there is one."""

    @property
    def generated_tokens(self) -> int:
        return int(self.sequence.target_mask.sum())

    @property
    def text(self) -> str:
        return "".join(self.turns)


@dataclass
class Ask:
    """One question for ``ReasoningLoop.stream``."""

    image: Image.Image
    question: str
    region: np.ndarray | None = None
    """Bool ``(H, W)`` mask every ``<|seg|>`` of the question gets instead of SAM 2.1's (oracle
    grounding, ``eval --masks gt``); None: decoded from the ``<|seg|>`` state."""


#: The phases a trajectory's ``timings`` splits its share of the batch's time into (``total`` sums them
#: with its share of the rest: choosing tokens, stopping rules, the cache's bookkeeping).
PHASES = ("prefill", "decode", "mask", "segmented_turn")


@dataclass
class _Row:
    """Per-question state while it is in the batch."""

    index: int
    """Position of the question in the stream's input."""
    image: Image.Image
    question: str
    builder: SequenceBuilder
    region: np.ndarray | None = None
    """Bool ``(H, W)`` mask shown in place of the decoded one (oracle grounding); None: decode."""
    generator: torch.Generator | None = None
    """This row's sampling generator (``row_seed``), so its draws do not depend on its neighbours."""
    fed: int = 0
    """Tokens of ``builder`` already in the KV cache."""
    fed_seg: bool = False
    """The last token fed was a ``<|seg|>`` of the model's turn (generated, or given by a forced
    opening): its state is the one SAM 2.1 decodes."""
    forced: bool = False
    """The model's first turn is given (``opening="forced"``) up to its ``<|seg|>``; the rest of it
    (``.<|im_end|>``) is given once that ``<|seg|>`` is fed."""
    turn_start: int = 0
    """Index in ``builder`` where the current model turn began."""
    generated: int = 0
    logprobs: list[float] = field(default_factory=list)
    steps: list[SegStep] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    pending_seg: list[torch.Tensor] = field(default_factory=list)
    """``<|seg|>`` states of the current turn, decoded when the turn closes."""
    sam: ImageEmbeddings | None = None
    """SAM 2.1's embedding of the image, once a ``<|seg|>`` of this row needed it."""
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*PHASES, "total"), 0.0))
    done: bool = False
    stop_reason: str = ""


def row_seed(seed: int, index: int) -> int:
    """The sampling seed of question ``index`` of a stream seeded ``seed``: each row draws from its own
    generator, so a sampled trajectory is the same whatever batch it ran in."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


class ReasoningLoop:
    """Runs ``SegAnswerModel`` through the multi-turn conversation; see the module docstring."""

    def __init__(self, model, settings: ReasoningSettings | None = None):
        self.model = model
        self.settings = settings or ReasoningSettings()
        ids = model.token_ids
        self.stop_ids = {ids.end_of_text}
        self.tokenizer = model.tokenizer
        # Ids the tokenizer has: the LM head may have more rows (Qwen2.5-VL-7B: 152064 for 151666
        # tokens); the spare ones decode to nothing and are never chosen.
        self.known_ids = len(model.tokenizer)
        self._never: torch.Tensor | None = None
        self._closing: frozenset[int] | None = None

    @torch.no_grad()
    def run(self, images: list[Image.Image], questions: list[str],
            regions: list[np.ndarray | None] | None = None, *, batch_size: int | None = None) -> list[Trajectory]:
        """The trajectories of ``questions`` about ``images``, in order. ``regions[i]`` (bool ``(H, W)``),
        when given, is the mask every ``<|seg|>`` of question ``i`` gets instead of SAM 2.1's (oracle
        grounding); None entries decode as usual. At most ``batch_size`` (default: all) run at once;
        see ``stream``."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        regions = list(regions) if regions is not None else [None] * len(images)
        if len(regions) != len(images):
            raise ValueError(f"{len(images)} images but {len(regions)} regions")
        asks = [Ask(image, question, region) for image, question, region in zip(images, questions, regions)]
        for ask in asks:  # bad input is said before anything runs
            self._check(ask)
        if not asks:
            return []
        done = dict(self.stream(asks, batch_size=batch_size or len(asks)))
        return [done[i] for i in range(len(asks))]

    @torch.no_grad()
    def stream(self, asks: Iterable[Ask], batch_size: int = 8) -> Iterator[tuple[int, Trajectory]]:
        """``(i, trajectory of asks[i])`` as each question finishes, with at most ``batch_size`` in the
        batch: a row that finishes (answer, end of turn, token limit) leaves at once and the next question
        of ``asks`` (read lazily, as slots free) takes its place, its prompt prefilled beside the others'
        decoding (continuous batching; ``row_cache.RowCache`` keeps the KV cache dense). ``UsageError`` or
        ``ValueError`` for a question that cannot be asked (empty, a region of the wrong shape), when its
        turn comes."""
        if batch_size < 1:
            raise UsageError("the batch size must be >= 1")
        queue = enumerate(asks)
        rows: list[_Row] = []  # in the cache's row order
        state = None  # (DynamicCache, attention (B, L)) of the rows that have fed something
        more = True
        while True:
            joining = []
            while more and len(rows) + len(joining) < batch_size:
                nxt = next(queue, None)
                if nxt is None:
                    more = False
                else:
                    joining.append(nxt)
            rows += self._start(joining)
            if not rows:
                return
            t_step = time.perf_counter()
            accounted = sum(row.timings["total"] for row in rows)
            hidden, state, rows = self._step(rows, state)  # (B, D): each row's last fed token; rows in cache order
            choices = self._choose(self.model.logits(hidden).float(), [row.generator for row in rows])
            looks = []
            for b, (row, (token, logprob)) in enumerate(zip(rows, choices)):
                # The <|seg|> the model generated last step has just been fed: its state is hidden[b].
                if row.fed_seg:
                    row.pending_seg.append(hidden[b])
                if row.forced:  # the given Response 1 ends: no token is chosen, the look follows
                    row.forced = False
                    conversation.close_forced_look(row.builder)
                    if self._closes_seg_turn(row):
                        looks.append(row)
                    continue
                row.builder.token_ids([token], target=True)
                row.logprobs.append(logprob)
                row.generated += 1
                if self._after_token(row, token):
                    looks.append(row)
            if looks:
                self._second_looks(looks)
            # what no phase holds (choosing, stopping rules, the cache's bookkeeping), shared by every row
            rest = time.perf_counter() - t_step - (sum(row.timings["total"] for row in rows) - accounted)
            for row in rows:
                row.timings["total"] += rest / len(rows)
            finished = [row for row in rows if row.done]
            if finished:
                keep = [b for b, row in enumerate(rows) if not row.done]
                rows = [rows[b] for b in keep]
                state = _keep_rows(state, keep)
                for row in finished:
                    yield row.index, self._trajectory(row)

    # -- one step's pieces ---------------------------------------------------------------------

    def _check(self, ask: Ask) -> None:
        if not ask.question or not ask.question.strip():
            raise UsageError("the question is empty")
        if ask.region is not None and np.shape(ask.region) != (ask.image.height, ask.image.width):
            raise ValueError(f"region mask has shape {np.shape(ask.region)} but the image is "
                             f"{ask.image.height}x{ask.image.width} (H, W)")

    def _start(self, joining: list[tuple[int, Ask]]) -> list[_Row]:
        """Rows for the ``(index, ask)`` pairs joining the batch: Prompt 1 built (the images' global
        views prepared together), nothing fed yet."""
        if not joining:
            return []
        t0 = time.perf_counter()
        for _, ask in joining:
            self._check(ask)
        model, s = self.model, self.settings
        rows = []
        for (index, ask), dense in zip(joining, model.global_views([ask.image for _, ask in joining])):
            b = conversation.reasoning_start(model, dense, ask.question, system=s.system)
            turn_start = len(b)
            forced = s.roi != "none" and s.opening == "forced"
            if s.roi == "none":
                conversation.open_direct_answer(b)  # so the turn reads <answer> ... </answer>
            elif forced:
                conversation.open_forced_look(b)  # Response 1 given up to its <|seg|>
            generator = None
            if s.sample and s.seed is not None:
                generator = torch.Generator(device=model.device).manual_seed(row_seed(s.seed, index))
            region = None if ask.region is None else np.asarray(ask.region, dtype=bool)
            rows.append(_Row(index=index, image=ask.image, question=ask.question, builder=b, turn_start=turn_start,
                             region=region, generator=generator, forced=forced))
        _share(rows, "prefill", time.perf_counter() - t0)
        return rows

    def _step(self, rows: list[_Row], state):
        """Feed every row what it has not fed yet. Rows decoding one token run as one forward on the
        cache; rows with a longer chunk (a new row's prompt, a segmented turn) as another, left-padded
        among themselves, so a long chunk never pads the decoding rows. Returns the last fed token's
        state per row ``(B, D)``, the new cache state and the rows in its order."""
        model = self.model
        cached = 0 if state is None else int(state[1].shape[0])  # rows[:cached] are in the cache, in its order
        unfed = [len(row.builder) - row.fed for row in rows]
        decoding = [b for b in range(cached) if unfed[b] == 1]
        feeding = [b for b in range(len(rows)) if b >= cached or unfed[b] > 1]
        if not feeding:  # the common step: every row feeds the token it chose last step, on the cache as it is
            t0 = time.perf_counter()
            ids = [row.builder.ids_from(row.fed)[0] for row in rows]
            # a generated token is text: position (p, p, p), the one before the builder's next
            positions = torch.tensor([row.builder.next_position - 1 for row in rows])[None, :, None].expand(3, -1, 1)
            for row, token in zip(rows, ids):
                row.fed += 1
                row.fed_seg = token == model.token_ids.seg
            embeds = model.mllm.get_input_embeddings()(torch.tensor(ids, device=model.device)[:, None])  # (B, 1, D)
            hidden, cache, attention = self._forward(embeds, positions, torch.ones(len(rows), 1, dtype=torch.long), *state)
            _share(rows, "decode", time.perf_counter() - t0)
            return hidden, (cache, attention), rows
        chunks = [row.builder.tail(row.fed) for row in rows]
        for row, chunk in zip(rows, chunks):
            row.fed += len(chunk)
            # a <|seg|> of the model's turn: generated, or the last given token of a forced opening
            row.fed_seg = int(chunk.input_ids[-1]) == model.token_ids.seg and row.fed - 1 >= row.turn_start
        whole = None if state is None else RowCache.of(*state)
        parts, states, order = [], [], []
        for group, phase in ((decoding, "decode"), (feeding, None)):
            if not group:
                continue
            old = [b for b in group if b < cached]
            if old == list(range(cached)) and len(old) == len(group):
                past = state  # the whole cache, as it is
            elif len(old) == len(group):
                past = whole.select(old)
            elif old:
                past = RowCache.join([whole.select(old), RowCache.empty_like(whole, len(group) - len(old))])
            else:
                past = None  # new rows only: a plain prefill
            if isinstance(past, RowCache):
                past = (past.to_cache(), past.attention)
            t0 = time.perf_counter()
            batch = model.collate([chunks[b] for b in group], padding_side="left")
            hidden, cache, attention = self._forward(model.embed(batch), batch.position_ids, batch.attention_mask,
                                                     *(past or (None, None)))
            seconds = time.perf_counter() - t0
            for b in group:
                _share([rows[b]], phase or ("prefill" if b >= cached else "segmented_turn"), seconds / len(group))
            parts.append(hidden)
            states.append(RowCache.of(cache, attention))
            order += group
        joined = RowCache.join(states)
        if len(states) == 1 and joined is states[0]:  # new rows only, already dense: the forward's cache as it is
            return parts[0], (cache, attention), [rows[b] for b in order]
        return torch.cat(parts), (joined.to_cache(), joined.attention), [rows[b] for b in order]

    def _forward(self, embeds, positions: torch.Tensor, new: torch.Tensor, cache,
                 attention: torch.Tensor | None):
        """The decoder on ``embeds`` (``(B, S, D)``, or ``DecoderInputs`` with DeepStack features) at
        ``positions`` ``(3, B, S)`` (``new`` ``(B, S)``: 1 for real tokens, 0 for left padding) after ``cache`` (None: nothing cached) whose columns
        ``attention`` marks. Returns the last position's state ``(B, D)``, the cache and the attention
        mask over all its columns."""
        mask = new if attention is None else torch.cat([attention, new], dim=1)
        out = self.model.language_model(embeds, positions, mask, cache=cache, use_cache=True)
        return out.last_hidden_state[:, -1], out.cache, mask

    def _choose(self, logits: torch.Tensor, generators: list) -> list[tuple[int, float]]:
        """The next token of each row and its log-probability: ``logits`` ``(B, V)``, one generator per
        row (None: torch's global RNG; unused when greedy)."""
        s = self.settings
        scaled = logits / (s.temperature if s.sample else 1.0)
        logp = torch.log_softmax(scaled, dim=-1)
        allowed = scaled.masked_fill(self._never_mask(scaled.shape[-1], scaled.device), float("-inf"))
        if not s.sample:
            chosen = torch.argmax(allowed, dim=-1)  # (B,)
        else:
            probs = torch.softmax(allowed, dim=-1)
            if s.top_p < 1.0:
                sorted_p, order = torch.sort(probs, dim=-1, descending=True)
                keep = torch.cumsum(sorted_p, -1) - sorted_p < s.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
            chosen = torch.cat([torch.multinomial(p / p.sum(), 1, generator=g) for p, g in zip(probs, generators)])
        picked = logp.gather(-1, chosen[:, None])[:, 0]
        return list(zip(chosen.tolist(), picked.tolist()))

    def _never_mask(self, vocab: int, device) -> torch.Tensor:
        """``(V,)`` bool: ids never chosen. A visual placeholder would leave the sequence with a pad token
        and no features for it; ``--roi none`` never chooses ``<|seg|>``; ids past the tokenizer are the
        LM head's vocabulary padding."""
        if self._never is None or self._never.shape[0] != vocab or self._never.device != torch.device(device):
            never = torch.zeros(vocab, dtype=torch.bool, device=device)
            never[list(self.model.token_ids.visual_placeholders)] = True
            if self.settings.roi == "none":
                never[self.model.token_ids.seg] = True
            never[self.known_ids :] = True
            self._never = never
        return self._never

    def _after_token(self, row: _Row, token: int) -> bool:
        """Update a row after it generated ``token``: stop it, or say that it asks for its segmented
        turn (True: the model asked to segment and closed its turn)."""
        s, ids = self.settings, self.model.token_ids
        if token in self.stop_ids:
            return self._finish(row, "eos")
        # the turn's text is decoded only when this token could end a "</answer>" (it holds a ">")
        if token in self._closers() and conversation.closes_answer(self._turn_text(row)):
            return self._finish(row, "answer")
        if row.generated >= s.max_new_tokens:
            return self._finish(row, "length")
        if token != ids.im_end:
            return False
        if not row.pending_seg:
            return self._finish(row, "end_of_turn")
        return self._closes_seg_turn(row)

    def _closes_seg_turn(self, row: _Row) -> bool:
        """The model's turn that asked to segment has closed: True when its segmented turn follows, False
        when it may not look again (the trajectory ends)."""
        if len(row.steps) >= self.settings.max_seg_steps:
            return self._finish(row, "max_seg_steps")
        row.turns.append(self._turn_text(row))
        return True

    def _turn_text(self, row: _Row) -> str:
        """The current model turn, decoded (special tokens kept, so ``<|seg|>`` shows)."""
        return self.tokenizer.decode(row.builder.ids_from(row.turn_start), skip_special_tokens=False)

    def _closers(self) -> frozenset[int]:
        """Ids whose token holds a ``>``: only such a token can complete a ``</answer>``."""
        if self._closing is None:
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(self.known_ids)))
            self._closing = frozenset(i for i, piece in enumerate(pieces) if piece is not None and ">" in piece)
        return self._closing

    def _second_looks(self, rows: list[_Row]) -> None:
        """Append the segmented turn of each row that asked for one this step. SAM 2.1 runs once for them
        all: one encoder call for the images not encoded yet, the decoder once per number of ``<|seg|>``
        states, the masks upsampled together (rows with a given region skip it)."""
        model = self.model
        t0 = time.perf_counter()
        decode = [row for row in rows if row.region is None]
        found: dict[int, list[tuple[np.ndarray, float, float]]] = {}
        if decode:
            need = [row for row in decode if row.sam is None]
            if need:  # SAM's image encoder runs once per image, only when a row needs it
                embeddings = model.encode_for_masks([row.image for row in need])
                for i, row in enumerate(need):
                    row.sam = embeddings.select(i)
            preds = model.decode_masks(ImageEmbeddings.cat([row.sam for row in decode]),
                                       [torch.stack(row.pending_seg) for row in decode])
            flat = [(row, pred, k) for row, pred in zip(decode, preds) for k in range(pred.low_res_logits.shape[0])]
            masks = binary_masks([pred.low_res_logits[k] for _, pred, k in flat],
                                 [(row.image.height, row.image.width) for row, _, _ in flat])
            for (row, pred, k), mask in zip(flat, masks):
                found.setdefault(row.index, []).append(
                    (mask, float(pred.iou[k]), float(torch.sigmoid(pred.object_logits[k]))))
            _share(decode, "mask", time.perf_counter() - t0)
        for row in rows:
            t1 = time.perf_counter()
            given = [(row.region, 1.0, 1.0)] * len(row.pending_seg)
            views = [self._second_look(row, *decoded) for decoded in (found[row.index] if row.region is None else given)]
            row.pending_seg.clear()
            # The newline after the model's reply, then Prompt 2: the segmented region(s).
            row.turn_start = len(conversation.second_look_turn(row.builder.after_reply(), views))
            if self.settings.opening == "forced":
                conversation.open_direct_answer(row.builder)  # the model writes only the answer
            _share([row], "segmented_turn", time.perf_counter() - t1)

    def _second_look(self, row: _Row, mask: np.ndarray, iou: float, obj: float) -> SegmentedView:
        """The segmented view of ``mask`` (recorded as a ``SegStep``); the original image when it is empty."""
        view, fallback = self.model.second_look(row.image, mask, mode=self.settings.roi)
        row.steps.append(SegStep(mask, iou, obj, kept_tokens=view.num_tokens, box=view.crop_box,
                                 fallback=fallback, view=view, given=row.region is not None))
        return view

    def _finish(self, row: _Row, reason: str) -> bool:
        row.turns.append(self._turn_text(row))
        row.done = True
        row.stop_reason = reason
        return False

    def _trajectory(self, row: _Row) -> Trajectory:
        answer = conversation.answer_of("".join(row.turns))
        return Trajectory(
            question=row.question,
            sequence=row.builder.build(),
            logprobs=torch.tensor(row.logprobs),
            steps=row.steps,
            turns=row.turns,
            answer=answer.value,
            answer_source=answer.source,
            stop_reason=row.stop_reason,
            timings=dict(row.timings),
            answer_reason=answer.reason,
        )


def _share(rows: list[_Row], phase: str, seconds: float) -> None:
    """Split ``seconds`` of ``phase`` evenly between ``rows`` (their ``total`` too)."""
    for row in rows:
        row.timings[phase] += seconds / len(rows)
        row.timings["total"] += seconds / len(rows)


def _keep_rows(state, keep: list[int]):
    """The cache state with only rows ``keep`` (None when none is left)."""
    if not keep:
        return None
    cache, attention = state
    if keep == list(range(int(attention.shape[0]))):
        return state
    kept = RowCache.of(cache, attention).select(keep)
    return kept.to_cache(), kept.attention


def run(model, image: Image.Image, question: str, settings: ReasoningSettings | None = None) -> Trajectory:
    """One question (see ``ReasoningLoop`` for batches)."""
    return ReasoningLoop(model, settings).run([image], [question])[0]


@torch.no_grad()
def answer_nll(model, image: Image.Image, trajectory: Trajectory, answers: list[str],
               system: str = tokens.DEFAULT_SYSTEM) -> list[float]:
    """The mean negative log-likelihood of each of ``answers`` as the model's final turn
    (``<answer> A </answer>.<|im_end|>``) after the turns of ``trajectory``: its question, then each
    turn that asked to segment followed by the segmented view it got. The likelihood protocol of V*'s
    official evaluation (options scored as replies, the lowest mean loss chosen), asked after the
    model's own second look.

    Earlier turns are given (not targets), so each value averages over the final turn's tokens only."""
    dense = model.global_view(image)
    sequences = []
    for answer in answers:
        b = conversation.reasoning_start(model, dense, trajectory.question, system=system)
        remaining = list(trajectory.steps)
        for turn in trajectory.turns:
            asked = turn.count(tokens.SEG_TOKEN)
            if not asked or len(remaining) < asked:  # the answer turn, or a request that got no view
                break
            conversation.second_look_turn(b.text(turn).after_reply(), [step.view for step in remaining[:asked]])
            remaining = remaining[asked:]
        sequences.append(b.assistant(tokens.answer_response(answer)).build())
    return [-float(logprobs.mean()) for logprobs in model.token_logprobs(sequences)]


#: A toy-world model (``Preset.world``) shown a picture with less than this share of its pixels in a
#: few flat colours (``images.flat_colour_share``) says so beside its answer.
TOY_WORLD_SHARE = 0.9


def world_warning(model, image: Image.Image, question: str | None = None) -> str | None:
    """The warning ``infer`` gives beside the answer when ``model`` knows only a toy world and
    ``image`` does not look like it, or ``question`` names nothing of it (None otherwise)."""
    from seganswer_cli.model.presets import model_world

    if model_world(model.info) != "shapes":
        return None
    from seganswer_cli.data.shapes_language import about_the_world
    from seganswer_cli.images import flat_colour_share

    share = flat_colour_share(image)
    outside = []
    if share < TOY_WORLD_SHARE:
        outside.append(f"{1 - share:.0%} of this picture's pixels are not in a few flat colours as such a scene's are")
    if question is not None and not about_the_world(question):
        outside.append("the question names no colour, shape or count of that world")
    if not outside:
        return None
    return ("this is a toy-world model, trained only on flat-coloured circles, squares, triangles and stars "
            f"(red, green, blue, yellow) on plain or noisy backgrounds; {' and '.join(outside)}, "
            "so the answer means little")


def trajectory_record(traj: Trajectory, **extra) -> dict:
    """A JSON-able summary of a trajectory (``infer --json``, batch output, eval predictions):
    answer, turns, each step's mask as COCO RLE with its box and kept tokens, token counts, timings."""
    from seganswer_cli.masks import encode_rle

    record = dict(extra)
    record.update(
        question=traj.question,
        answer=traj.answer,
        answer_source=traj.answer_source,
        answer_reason=traj.answer_reason,
        stop_reason=traj.stop_reason,
        turns=traj.turns,
        steps=[
            {
                "mask": encode_rle(step.mask) if step.mask is not None else None,
                "mask_area": int(step.mask.sum()) if step.mask is not None else 0,
                "crop_box": list(step.box) if step.box else None,  # x0, y0, x1, y1 (exclusive)
                "kept_tokens": step.kept_tokens,
                "iou": round(step.iou, 4),
                "object_score": round(step.object_score, 4),
                "fallback": step.fallback,
                "source": "given" if step.given else "model",  # given: oracle grounding (eval --masks gt)
            }
            for step in traj.steps
        ],
        generated_tokens=traj.generated_tokens,
        sequence_tokens=len(traj.sequence),
        timings={k: round(v, 4) for k, v in traj.timings.items()},
    )
    return record
