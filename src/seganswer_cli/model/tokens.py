"""The ``<|seg|>`` token, the answer tags, the chat format and the paper's prompt templates.

Defined once here; ``conversation.py`` lays the turns out from them for training (all three
stages), the reasoning loop and evaluation, so a prompt cannot drift between training and inference.
"""

from __future__ import annotations

#: The segmentation token: its last-layer hidden state becomes SAM 2.1's sparse prompt.
SEG_TOKEN = "<|seg|>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

# Qwen2.5-VL's chat and vision special tokens (as in its tokenizer).
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
QWEN_SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

DEFAULT_SYSTEM = "You are a helpful assistant."

# -- Stage 1 (paper §3.1, Prompt 1 / Response 1) ------------------------------------------------

STAGE1_PROMPT = 'Segment the "{expression}" in the image.'
STAGE1_RESPONSE = f"It is {SEG_TOKEN}."


def stage1_prompt(expression: str) -> str:
    """The user text of a Stage 1 referring-segmentation turn (the image comes before it)."""
    return STAGE1_PROMPT.format(expression=expression.strip().rstrip("."))


# -- Stages 2 and 3 (paper §3.2, the reasoning prompt) ------------------------------------------

REASONING_INSTRUCTION = (
    "Based on the original image and the question, reason whether there exists a region in the image "
    "that could help you answer the question better. If such a region exists, do segmentation to get the "
    f"question-relevant area with the tag {SEG_TOKEN}.\n"
    "Then, you will receive the segmented area. Use both the segmented area and the original image to "
    f"answer the question inside the {ANSWER_OPEN} and {ANSWER_CLOSE} tags.\n"
    f"Format Example: {SEG_TOKEN} OR {ANSWER_OPEN} final answer {ANSWER_CLOSE}."
)
#: Response 1 of the paper's Stage 2 conversation: the model decides to segment.
SEG_RESPONSE = f"To find the answer, it should first observe {SEG_TOKEN}."


def reasoning_prompt(question: str) -> str:
    """The user text of turn 1 of the reasoning conversation (the image comes before it)."""
    return f"Question: {question.strip()}\n{REASONING_INSTRUCTION}"


def answer_response(answer: str) -> str:
    """Response 2: the final answer inside the answer tags."""
    return f"{ANSWER_OPEN} {answer.strip()} {ANSWER_CLOSE}."


# -- Chat format (Qwen2.5-VL's template, written out so token positions are under our control) ---


def system_turn(system: str = DEFAULT_SYSTEM) -> str:
    return f"{IM_START}system\n{system}{IM_END}\n"


def user_turn_open() -> str:
    """Text before the user turn's content (an image placeholder may follow)."""
    return f"{IM_START}user\n"


def turn_close() -> str:
    return f"{IM_END}\n"


def assistant_turn_open() -> str:
    return f"{IM_START}assistant\n"


def image_placeholder() -> str:
    """One image in a prompt before expansion: the processor expands the pad to one token per cell."""
    return f"{VISION_START}{IMAGE_PAD}{VISION_END}"


#: Qwen2.5-VL's chat template (text and images only), kept for users who call
#: ``processor.apply_chat_template``; our own code builds sequences with the functions above.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
