"""Image generation (engine.py) and image grids (grid.py)."""

# The prompt classifier-free guidance pairs with every image (GenerationConfig.negative_prompt's default).
UNCONDITIONAL_PROMPT = ""
# torch.compile modes a config may name for a UNet ("none": eager); generation and fine-tuning both take them.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
