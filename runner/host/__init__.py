"""The host side: the CLI, the executors, the renderers and the image pipeline. No torch."""
