"""seganswer: Segmentation before Answering (pixel grounding for MLLM visual reasoning)."""

__version__ = "0.1.0"
