"""open_clip backbones, hand-crafted templates and the prompt-learning hooks."""
