"""Image generation (engine.py) and image grids (grid.py)."""

# The prompt classifier-free guidance pairs with every image (GenerationConfig.negative_prompt's default).
UNCONDITIONAL_PROMPT = ""
