"""The one multi-turn reasoning loop: ``infer``, ``eval`` and Stage 3's rollouts all call ``run``.

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
   answer, it should first observe <|seg|>.``), the mask comes from that ``<|seg|>``'s state, and
   the turn after the view opens with ``<answer>``; ``--roi none`` opens with ``<answer>`` as
   always. With the default ``opening="model"`` the model decides whether to segment (the paper's
   method; ``none`` still opens with ``<answer>``, the only way to ask for no look).
3. Stop at ``</answer>``, ``<|im_end|>`` of a turn without ``<|seg|>``, EOS, or the token limit; the
   answer is ``conversation.answer_of`` of the model's turns (the one rule eval and the rewards use).

An empty mask falls back to the original image (a full-mask view at the original positions) and
is recorded on the step. ``run(..., regions=...)`` replaces the decoded masks by given ones (the
annotated region of each question: ``eval --masks gt``, the oracle-grounding ablation); the model
still decides whether to look. Several questions run as one batch: every step feeds each active row a
chunk (one token while decoding; a whole segmented turn when one is due), left-padded to one
length; finished rows feed padding. Positions are explicit, so padding never shifts them.

``Trajectory.sequence`` is the whole conversation exactly as the model saw it (ids, 3-D positions,
visual slots), with ``target_mask`` marking the tokens the model generated: Stage 3 recomputes
log-probabilities on it and masks its loss with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from seganswer_cli.errors import UsageError
from seganswer_cli.model import conversation, tokens
from seganswer_cli.model.mask_decoder import upsample_logits
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
class _Row:
    """Per-question state while the batch runs."""

    image: Image.Image
    question: str
    builder: SequenceBuilder
    region: np.ndarray | None = None
    """Bool ``(H, W)`` mask shown in place of the decoded one (oracle grounding); None: decode."""
    fed: int = 0
    """Tokens of ``builder`` already in the KV cache."""
    turn_start: int = 0
    """Index in ``builder`` where the current model turn began."""
    generated: int = 0
    logprobs: list[float] = field(default_factory=list)
    steps: list[SegStep] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    pending_seg: list[torch.Tensor] = field(default_factory=list)
    """``<|seg|>`` states of the current turn, decoded when the turn closes."""
    done: bool = False
    stop_reason: str = ""


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

    @torch.no_grad()
    def run(self, images: list[Image.Image], questions: list[str],
            regions: list[np.ndarray | None] | None = None) -> list[Trajectory]:
        """The trajectories of ``questions`` about ``images``. ``regions[i]`` (bool ``(H, W)``), when
        given, is the mask every ``<|seg|>`` of question ``i`` gets instead of SAM 2.1's (oracle
        grounding); None entries decode as usual."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        regions = list(regions) if regions is not None else [None] * len(images)
        if len(regions) != len(images):
            raise ValueError(f"{len(images)} images but {len(regions)} regions")
        for q in questions:
            if not q or not q.strip():
                raise UsageError("the question is empty")
        model, s = self.model, self.settings
        generator = None
        if s.sample and s.seed is not None:
            generator = torch.Generator(device=model.device).manual_seed(s.seed)
        t_start = time.perf_counter()
        timings = {"prefill": 0.0, "decode": 0.0, "mask": 0.0, "segmented_turn": 0.0}

        rows = []
        for image, question, region in zip(images, questions, regions):
            if region is not None:
                region = np.asarray(region, dtype=bool)
                if region.shape != (image.height, image.width):
                    raise ValueError(f"region mask has shape {region.shape} but the image is "
                                     f"{image.height}x{image.width} (H, W)")
            b = conversation.reasoning_start(model, model.global_view(image), question, system=s.system)
            turn_start = len(b)
            if s.roi == "none":
                conversation.open_direct_answer(b)  # so the turn reads <answer> ... </answer>
            elif s.opening == "forced":
                conversation.open_forced_look(b)  # Response 1 given: the mask comes from its <|seg|>
            rows.append(_Row(image=image, question=question, builder=b, turn_start=turn_start, region=region))

        cache = None
        attention = torch.zeros(len(rows), 0, dtype=torch.long)
        sam_cache: dict[int, object] = {}
        first = True
        while True:
            # Every active row feeds what it has not fed yet; finished rows feed one pad.
            chunks = [None if row.done else row.builder.tail(row.fed) for row in rows]
            if all(c is None for c in chunks):
                break
            # A step is "prefill" (turn 1), "segmented_turn" when some row feeds a new turn, else "decode".
            phase = "prefill" if first else "segmented_turn" if any(c is not None and len(c) > 1 for c in chunks) else "decode"
            first = False
            t0 = time.perf_counter()
            hidden, cache, attention = self._feed(chunks, cache, attention)
            last = hidden[:, -1]  # (B, D): state of each row's last fed token
            logits = model.logits(last).float()  # (B, V)
            timings[phase] += time.perf_counter() - t0

            width = hidden.shape[1]
            for b, (row, chunk) in enumerate(zip(rows, chunks)):
                if chunk is None:
                    continue
                # Every <|seg|> of the model's turn just fed (the one it generated last step, or one
                # given in a forced opening): its state is that position's (chunks are left-padded).
                ids = chunk.input_ids.tolist()
                for i, token_id in enumerate(ids):
                    if token_id == model.token_ids.seg and row.fed + i >= row.turn_start:
                        row.pending_seg.append(hidden[b, width - len(ids) + i])
                row.fed += len(chunk)
                if not chunk.target_mask[-1] and ids[-1] == model.token_ids.im_end:
                    # a given turn (the forced Response 1) closed: the segmented turn follows at once
                    self._close_turn(row, sam_cache, timings, b)
                    continue
                token, logprob = self._choose(logits[b], generator)
                row.builder.token_ids([token], target=True)
                row.logprobs.append(logprob)
                row.generated += 1
                self._after_token(row, token, sam_cache, timings, b)

        timings["total"] = time.perf_counter() - t_start
        share = {k: v / len(rows) for k, v in timings.items()}
        return [self._trajectory(row, share) for row in rows]

    # -- one step's pieces ---------------------------------------------------------------------

    def _feed(self, chunks: list[Sequence | None], cache, attention: torch.Tensor):
        """Embed the rows' chunks, left-padded to one length, and run them through the decoder with
        the cache. Returns last-layer states ``(B, L, D)``, the cache and the running attention mask."""
        model = self.model
        pad = model.builder().token_ids([model.token_ids.pad]).build()
        padded = [c if c is not None else pad for c in chunks]
        batch = model.collate(padded, padding_side="left")
        mask = batch.attention_mask.clone()
        for b, c in enumerate(chunks):
            if c is None:
                mask[b] = 0
        embeds = model.embed(batch)
        attention = torch.cat([attention, mask], dim=1)
        out = model.language_model(embeds, batch.position_ids, attention, cache=cache, use_cache=True)
        return out.last_hidden_state, out.cache, attention

    def _choose(self, logits: torch.Tensor, generator) -> tuple[int, float]:
        s = self.settings
        scaled = logits / (s.temperature if s.sample else 1.0)
        logp = torch.log_softmax(scaled, dim=-1)
        # a visual placeholder would leave the sequence with a pad token and no features for it
        never = list(self.model.token_ids.visual_placeholders)
        if s.roi == "none":  # no second look: <|seg|> is never chosen
            never.append(self.model.token_ids.seg)
        scaled = scaled.clone()
        scaled[never] = float("-inf")
        scaled[self.known_ids :] = float("-inf")  # rows past the tokenizer (vocabulary padding)
        if not s.sample:
            token = int(torch.argmax(scaled))
        else:
            probs = torch.softmax(scaled, dim=-1)
            if s.top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_p, 0) - sorted_p < s.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            token = int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
        return token, float(logp[token])

    def _after_token(self, row: _Row, token: int, sam_cache: dict, timings: dict, index: int) -> None:
        """Update a row after it generated ``token``: stop, or open the segmented turn."""
        s, ids = self.settings, self.model.token_ids
        turn_ids = row.builder.ids_from(row.turn_start)
        turn_text = self.tokenizer.decode(turn_ids, skip_special_tokens=False)
        if token in self.stop_ids:
            return self._finish(row, turn_text, "eos")
        if conversation.closes_answer(turn_text):
            return self._finish(row, turn_text, "answer")
        if row.generated >= s.max_new_tokens:
            return self._finish(row, turn_text, "length")
        if token != ids.im_end:
            return
        if not row.pending_seg:
            return self._finish(row, turn_text, "end_of_turn")
        self._close_turn(row, sam_cache, timings, index)

    def _close_turn(self, row: _Row, sam_cache: dict, timings: dict, index: int) -> None:
        """The model's turn that asked to segment has closed: append the segmented turn (or end the
        trajectory when it may not look again)."""
        s = self.settings
        turn_text = self.tokenizer.decode(row.builder.ids_from(row.turn_start), skip_special_tokens=False)
        if len(row.steps) >= s.max_seg_steps:
            return self._finish(row, turn_text, "max_seg_steps")
        row.turns.append(turn_text)
        t0, mask_seconds, views = time.perf_counter(), 0.0, []
        for state in row.pending_seg:
            t_mask = time.perf_counter()
            mask, iou, obj = self._decode_mask(row, state, sam_cache, index)
            mask_seconds += time.perf_counter() - t_mask
            views.append(self._second_look(row, mask, iou, obj))
        timings["mask"] += mask_seconds
        timings["segmented_turn"] += time.perf_counter() - t0 - mask_seconds
        row.pending_seg.clear()
        # The newline after the model's reply, then Prompt 2: the segmented region(s).
        b = conversation.second_look_turn(row.builder.after_reply(), views)
        row.turn_start = len(b)
        if s.opening == "forced":
            conversation.open_direct_answer(b)  # the model writes only the answer

    def _decode_mask(self, row: _Row, state: torch.Tensor, sam_cache: dict, index: int) -> tuple[np.ndarray, float, float]:
        """Bool ``(H, W)`` mask, predicted IoU and object score from one ``<|seg|>`` state (the row's
        given region, with IoU and score 1, when it has one)."""
        if row.region is not None:
            return row.region, 1.0, 1.0
        model = self.model
        if index not in sam_cache:  # SAM's image encoder runs once per image, only when needed
            sam_cache[index] = model.encode_for_masks([row.image])
        pred = model.decode_masks(sam_cache[index], [state[None]])[0]
        logits = upsample_logits(pred.low_res_logits[:1], (row.image.height, row.image.width))[0]
        return (logits > 0).cpu().numpy(), float(pred.iou[0]), float(torch.sigmoid(pred.object_logits[0]))

    def _second_look(self, row: _Row, mask: np.ndarray, iou: float, obj: float) -> SegmentedView:
        """The segmented view of ``mask`` (recorded as a ``SegStep``); the original image when it is empty."""
        view, fallback = self.model.second_look(row.image, mask, mode=self.settings.roi)
        row.steps.append(SegStep(mask, iou, obj, kept_tokens=view.num_tokens, box=view.crop_box,
                                 fallback=fallback, view=view, given=row.region is not None))
        return view

    def _finish(self, row: _Row, turn_text: str, reason: str) -> None:
        row.turns.append(turn_text)
        row.done = True
        row.stop_reason = reason

    def _trajectory(self, row: _Row, timings: dict) -> Trajectory:
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
            timings=dict(timings),
            answer_reason=answer.reason,
        )


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
